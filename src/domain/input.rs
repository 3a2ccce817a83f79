//! A task's input against its template's JSON Schema.

use serde_json::Value;

/// A template's compiled input schema.
pub struct InputSchema(Option<jsonschema::Validator>);

impl InputSchema {
    /// Compiles a template's schema; an error names what is wrong with it.
    pub fn compile(schema: Option<&Value>) -> Result<Self, String> {
        match schema {
            None => Ok(Self(None)),
            Some(schema) => jsonschema::validator_for(schema)
                .map(|v| Self(Some(v)))
                .map_err(|e| format!("the template's inputSchema is invalid: {e}")),
        }
    }

    /// Checks an input: it must be a JSON object and match the schema.
    /// The error names the failing field, e.g. `input.style: "x" is not one of ...`.
    pub fn check(&self, input: &Value) -> Result<(), String> {
        if !input.is_object() {
            return Err("input must be a JSON object".into());
        }
        let Some(validator) = &self.0 else {
            return Ok(());
        };
        match validator.iter_errors(input).next() {
            None => Ok(()),
            Some(error) => {
                let pointer = error.instance_path().to_string();
                let path: String = pointer.split('/').filter(|s| !s.is_empty()).map(|s| format!(".{s}")).collect();
                Err(format!("input{path}: {error}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_failing_field() {
        let schema = json!({"type": "object", "required": ["prompt"], "properties": {
            "prompt": {"type": "string", "minLength": 5},
            "style": {"enum": ["portrait", "landscape"]}
        }});
        let schema = InputSchema::compile(Some(&schema)).unwrap();
        assert!(schema.check(&json!({"prompt": "a long prompt"})).is_ok());
        let err = schema.check(&json!({"prompt": "a long prompt", "style": "x"})).unwrap_err();
        assert!(err.starts_with("input.style:"), "{err}");
        let err = schema.check(&json!({})).unwrap_err();
        assert!(err.contains("prompt"), "{err}");
        assert!(schema.check(&json!([1])).is_err());
    }

    #[test]
    fn no_schema_accepts_any_object() {
        let schema = InputSchema::compile(None).unwrap();
        assert!(schema.check(&json!({"anything": [1, 2]})).is_ok());
        assert!(schema.check(&json!("text")).is_err());
    }

    #[test]
    fn invalid_schema_is_reported() {
        assert!(InputSchema::compile(Some(&json!({"type": 12}))).is_err());
    }
}
