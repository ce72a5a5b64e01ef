//! Hand-written schema fragments for fields that hold free-form JSON.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A JSON object whose content Kubernetes keeps as written (for example a JSON Schema).
pub fn preserve_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Any JSON value (string, number, boolean, list or object), kept as written.
pub fn preserve_any(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A map from string to any JSON value.
pub fn preserve_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true },
    })
}
