//! Whether a template can run tasks: the status the controller shows on a
//! GpuTemplate. Pure; the controller writes what this returns.

use jiff::Timestamp;

use super::input::InputSchema;
use super::lifecycle::upsert_condition;
use crate::resources::{GpuTemplate, GpuTemplateStatus, conditions};

/// The status `template` should have, or None when its current one says it already.
pub fn template_status(template: &GpuTemplate, now: Timestamp) -> Option<GpuTemplateStatus> {
    let current = template.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = template.metadata.generation;
    let (ready, reason, message) = match InputSchema::compile(template.spec.input_schema.as_ref()) {
        Ok(_) => (true, "Valid", "tasks can run from this template".to_string()),
        Err(why) => (false, "InvalidInputSchema", why),
    };
    upsert_condition(&mut next.conditions, next.observed_generation, conditions::READY, ready, reason, &message, now);
    (next != current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{template, ts};

    #[test]
    fn a_template_with_a_valid_schema_is_ready_once() {
        let mut t = template();
        t.metadata.generation = Some(3);
        let status = template_status(&t, ts(5)).expect("a new template gets a status");
        let ready = &status.conditions[0];
        assert_eq!((ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()), ("Ready", "True", "Valid"));
        assert_eq!(status.observed_generation, Some(3));
        t.status = Some(status);
        assert_eq!(template_status(&t, ts(9)), None, "nothing to write when nothing changed");
    }

    #[test]
    fn an_invalid_schema_makes_the_template_not_ready_with_the_reason() {
        let mut t = template();
        t.spec.input_schema = Some(serde_json::json!({"type": "no-such-type"}));
        let status = template_status(&t, ts(5)).unwrap();
        let ready = &status.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidInputSchema"));
        assert!(ready.message.contains("inputSchema is invalid"), "{}", ready.message);
    }
}
