//! Validation of raw objects against the generated CRD schemas, as the API server does it:
//! OpenAPI types, patterns, bounds and enums, then the CEL `x-kubernetes-validations` rules.
//! Dev mode runs it on YAML files so that what the cluster would refuse is refused locally.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

use crate::bundle::ObjectKind;
use crate::crdgen;

struct KindSchema {
    openapi: Value,
    json_schema: Option<jsonschema::Validator>,
    cel: CompiledSchema,
}

fn schemas() -> &'static BTreeMap<ObjectKind, KindSchema> {
    static SCHEMAS: OnceLock<BTreeMap<ObjectKind, KindSchema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let kinds = [
            ObjectKind::Tenant,
            ObjectKind::Agent,
            ObjectKind::Tool,
            ObjectKind::Workflow,
            ObjectKind::FeatureFlag,
        ];
        kinds
            .into_iter()
            .zip(crdgen::all())
            .map(|(kind, crd)| {
                let openapi = crd
                    .spec
                    .versions
                    .first()
                    .and_then(|v| v.schema.as_ref())
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .and_then(|s| serde_json::to_value(s).ok())
                    .unwrap_or(Value::Null);
                let json_schema = jsonschema::validator_for(&openapi_to_json_schema(&openapi)).ok();
                let cel = compile_schema(&openapi);
                (
                    kind,
                    KindSchema {
                        openapi,
                        json_schema,
                        cel,
                    },
                )
            })
            .collect()
    })
}

/// The `openAPIV3Schema` of a kind's CRD.
pub fn openapi_schema(kind: ObjectKind) -> &'static Value {
    static NULL: Value = Value::Null;
    schemas().get(&kind).map_or(&NULL, |s| &s.openapi)
}

/// Problems of `object` (a whole resource: apiVersion, kind, metadata, spec) against the
/// kind's schema; empty when it would be admitted.
pub fn validate_object(kind: ObjectKind, object: &Value) -> Vec<String> {
    let Some(schema) = schemas().get(&kind) else {
        return vec![format!("no schema for kind {kind}")];
    };
    let mut problems = Vec::new();
    match &schema.json_schema {
        Some(validator) => {
            for error in validator.iter_errors(object) {
                let path = error.instance_path().to_string();
                let field = path.trim_start_matches('/').replace('/', ".");
                let field = if field.is_empty() {
                    "<root>".to_owned()
                } else {
                    field
                };
                problems.push(format!("{field}: {error}"));
            }
        }
        None => problems.push(format!("the {kind} schema could not be compiled")),
    }
    if problems.is_empty()
        && let Err(errors) = Validator::new().validate_compiled(&schema.cel, object, None)
    {
        problems.extend(errors.iter().map(ToString::to_string));
    }
    problems
}

/// Rewrites OpenAPI v3 `nullable` into JSON Schema (`type: [T, "null"]`) so that a JSON
/// Schema validator reads the CRD schema as the API server does.
pub fn openapi_to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                let converted = match key.as_str() {
                    // Keys under these are property names, not schemas.
                    "properties" => Value::Object(
                        value
                            .as_object()
                            .map(|props| {
                                props
                                    .iter()
                                    .map(|(k, v)| (k.clone(), openapi_to_json_schema(v)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    "default" | "example" | "enum" | "x-kubernetes-validations" => value.clone(),
                    _ => openapi_to_json_schema(value),
                };
                out.insert(key.clone(), converted);
            }
            if out.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = out.get("type").cloned()
            {
                out.insert("type".to_owned(), serde_json::json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(openapi_to_json_schema).collect()),
        other => other.clone(),
    }
}
