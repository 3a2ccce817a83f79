//! Schema fragments that schemars cannot derive in the shape the apiserver
//! wants: free-form JSON objects and list-map conditions.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A free-form JSON object, kept as is by the apiserver.
pub fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// An optional free-form JSON object.
pub fn optional_free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `metav1.Condition` list keyed by `type`, as Kubernetes conventions require.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition::json_schema(generator);
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
