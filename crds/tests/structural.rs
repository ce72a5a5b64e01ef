//! The generated CRDs are structural schemas, as the API server requires
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>),
//! and carry what DESIGN.md promises of every kind: a status subresource, the `agentry`
//! category, a short name, printer columns, `conditions` as a list-map keyed by `type`, and
//! `observedGeneration`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

use std::collections::BTreeSet;

use agentry_crds::crdgen;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value, json};

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

/// Keys a node inside a logical junctor must not set (the int-or-string pattern aside).
const FORBIDDEN_IN_JUNCTOR: [&str; 9] = [
    "type",
    "default",
    "additionalProperties",
    "nullable",
    "description",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

/// Keys that structural schemas (or the CRD API) do not allow anywhere.
const FORBIDDEN_ANYWHERE: [&str; 4] = ["$ref", "definitions", "dependencies", "patternProperties"];

/// Everything that makes `schema` (an `openAPIV3Schema`) non-structural, as `path: problem`.
fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, "<root>", false, &mut out);
    check_metadata(schema, &mut out);
    out
}

fn flag(node: &Map<String, Value>, key: &str) -> bool {
    node.get(key) == Some(&Value::Bool(true))
}

fn child(path: &str, segment: &str) -> String {
    if path == "<root>" {
        segment.to_owned()
    } else if segment.starts_with('[') {
        format!("{path}{segment}")
    } else {
        format!("{path}.{segment}")
    }
}

fn walk(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(node) = node.as_object() else {
        out.push(format!("{path}: a schema must be an object"));
        return;
    };
    let int_or_string = flag(node, "x-kubernetes-int-or-string");
    let preserve = flag(node, "x-kubernetes-preserve-unknown-fields");
    let type_ = node.get("type").and_then(Value::as_str);

    for key in FORBIDDEN_ANYWHERE {
        if node.contains_key(key) {
            out.push(format!("{path}: {key} is not allowed"));
        }
    }
    if in_junctor {
        for key in FORBIDDEN_IN_JUNCTOR {
            if node.contains_key(key) {
                out.push(format!(
                    "{path}: {key} is not allowed inside allOf/anyOf/oneOf/not"
                ));
            }
        }
        if int_or_string {
            out.push(format!(
                "{path}: x-kubernetes-int-or-string inside a junctor"
            ));
        }
    } else {
        if !int_or_string && !preserve && type_.is_none_or(str::is_empty) {
            out.push(format!("{path}: type must be set (and not empty)"));
        }
        if int_or_string && node.contains_key("type") {
            out.push(format!(
                "{path}: x-kubernetes-int-or-string must not set type"
            ));
        }
    }
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        out.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields must be true or unset"
        ));
    }
    if flag(node, "x-kubernetes-embedded-resource") && type_ != Some("object") {
        out.push(format!(
            "{path}: x-kubernetes-embedded-resource needs type object"
        ));
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if node.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push(format!(
            "{path}: additionalProperties: false is not allowed"
        ));
    }
    if flag(node, "uniqueItems") {
        out.push(format!("{path}: uniqueItems: true is not allowed"));
    }
    if type_ == Some("array") && !node.contains_key("items") {
        out.push(format!("{path}: an array must specify items"));
    }
    if let Some(items) = node.get("items")
        && !items.is_object()
    {
        out.push(format!("{path}: items must be one schema, not a list"));
    }
    check_list_type(node, path, out);

    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            walk(sub, &child(path, name), in_junctor, out);
        }
    }
    if let Some(items) = node.get("items").filter(|i| i.is_object()) {
        walk(items, &child(path, "[]"), in_junctor, out);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
        walk(extra, &child(path, "*"), in_junctor, out);
    }
    for junctor in JUNCTORS {
        let Some(value) = node.get(junctor) else {
            continue;
        };
        let branches: Vec<&Value> = match value {
            Value::Array(list) => list.iter().collect(),
            other => vec![other],
        };
        for (i, branch) in branches.into_iter().enumerate() {
            let at = format!("{path}.{junctor}[{i}]");
            // The int-or-string pattern: anyOf [{type: integer}, {type: string}].
            let int_or_string_branch = int_or_string
                && branch
                    .as_object()
                    .is_some_and(|b| b.len() == 1 && b.contains_key("type"));
            if !int_or_string_branch {
                walk(branch, &at, true, out);
            }
            check_junctor_fields_outside(node, branch, &at, out);
        }
    }
}

/// Every field and item a junctor speaks about must also be specified outside of it.
fn check_junctor_fields_outside(
    outside: &Map<String, Value>,
    branch: &Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let outside_props = outside.get("properties").and_then(Value::as_object);
    if let Some(props) = branch.get("properties").and_then(Value::as_object) {
        for name in props.keys() {
            if !outside_props.is_some_and(|o| o.contains_key(name)) {
                out.push(format!(
                    "{at}: field {name} is not specified outside the junctor"
                ));
            }
        }
    }
    if branch.get("items").is_some() && !outside.contains_key("items") {
        out.push(format!("{at}: items are not specified outside the junctor"));
    }
}

/// `x-kubernetes-list-type: map` needs object items whose key fields are scalar and required
/// (or defaulted).
fn check_list_type(node: &Map<String, Value>, path: &str, out: &mut Vec<String>) {
    let list_type = node.get("x-kubernetes-list-type").and_then(Value::as_str);
    let keys = node.get("x-kubernetes-list-map-keys");
    if keys.is_some() && list_type != Some("map") {
        out.push(format!(
            "{path}: x-kubernetes-list-map-keys needs x-kubernetes-list-type: map"
        ));
    }
    if let Some(list_type) = list_type
        && !["atomic", "set", "map"].contains(&list_type)
    {
        out.push(format!(
            "{path}: unknown x-kubernetes-list-type {list_type}"
        ));
    }
    if list_type != Some("map") {
        return;
    }
    let keys: Vec<&str> = keys
        .and_then(Value::as_array)
        .map(|k| k.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        out.push(format!(
            "{path}: a list-map needs x-kubernetes-list-map-keys"
        ));
    }
    let items = node.get("items").and_then(Value::as_object);
    if items.and_then(|i| i.get("type")).and_then(Value::as_str) != Some("object") {
        out.push(format!("{path}: a list-map's items must be objects"));
        return;
    }
    let Some(items) = items else { return };
    let required: BTreeSet<&str> = items
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for key in keys {
        let Some(prop) = items.get("properties").and_then(|p| p.get(key)) else {
            out.push(format!(
                "{path}: list-map key {key} is not a property of the items"
            ));
            continue;
        };
        if !required.contains(key) && prop.get("default").is_none() {
            out.push(format!(
                "{path}: list-map key {key} must be required or defaulted"
            ));
        }
        let scalar = prop
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| ["string", "integer", "number", "boolean"].contains(&t));
        if !scalar {
            out.push(format!("{path}: list-map key {key} must be a scalar"));
        }
    }
}

/// `metadata` at the root may only restrict `name` and `generateName`.
fn check_metadata(schema: &Value, out: &mut Vec<String>) {
    let Some(meta) = schema
        .pointer("/properties/metadata")
        .and_then(Value::as_object)
    else {
        return;
    };
    for key in meta.keys() {
        if !["type", "properties"].contains(&key.as_str()) {
            out.push(format!(
                "metadata: only name and generateName may be restricted, found {key}"
            ));
        }
    }
    if let Some(props) = meta.get("properties").and_then(Value::as_object) {
        for name in props.keys() {
            if !["name", "generateName"].contains(&name.as_str()) {
                out.push(format!(
                    "metadata.{name}: only name and generateName may be restricted"
                ));
            }
        }
    }
}

/// Paths of nodes with `x-kubernetes-preserve-unknown-fields: true`.
fn preserve_unknown_paths(node: &Value, path: &str, out: &mut BTreeSet<String>) {
    let Some(map) = node.as_object() else { return };
    if flag(map, "x-kubernetes-preserve-unknown-fields") {
        out.insert(path.to_owned());
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            preserve_unknown_paths(sub, &child(path, name), out);
        }
    }
    if let Some(items) = map.get("items") {
        preserve_unknown_paths(items, &child(path, "[]"), out);
    }
    if let Some(extra) = map.get("additionalProperties") {
        preserve_unknown_paths(extra, &child(path, "*"), out);
    }
}

/// Fields (`properties` entries, and the root) without a non-empty description.
fn undescribed(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else { return };
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let at = child(path, name);
            let described = sub
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                out.push(at.clone());
            }
            undescribed(sub, &at, out);
        }
    }
    if let Some(items) = map.get("items") {
        undescribed(items, &child(path, "[]"), out);
    }
    if let Some(extra) = map.get("additionalProperties") {
        undescribed(extra, &child(path, "*"), out);
    }
}

/// Defaults must be admissible values: a default outside its enum would be written into
/// every object and then refused.
fn bad_defaults(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else { return };
    if let (Some(default), Some(Value::Array(allowed))) = (map.get("default"), map.get("enum"))
        && !allowed.contains(default)
    {
        out.push(format!("{path}: default {default} is not in the enum"));
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            bad_defaults(sub, &child(path, name), out);
        }
    }
    if let Some(items) = map.get("items") {
        bad_defaults(items, &child(path, "[]"), out);
    }
}

fn openapi(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every CRD version has a schema");
    serde_json::to_value(schema).unwrap()
}

fn kind(crd: &CustomResourceDefinition) -> &str {
    &crd.spec.names.kind
}

/// Resolves a printer column's JSONPath (`.status.conditions[?(...)].status`) in the schema.
fn resolves(schema: &Value, json_path: &str) -> bool {
    if json_path.starts_with(".metadata.") {
        return true;
    }
    // Split on dots outside brackets; a bracketed suffix steps into the list's items.
    let mut segments: Vec<(String, bool)> = Vec::new();
    let (mut name, mut depth, mut indexed) = (String::new(), 0usize, false);
    for c in json_path.trim_start_matches('.').chars() {
        match c {
            '[' => {
                depth += 1;
                indexed = true;
            }
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                segments.push((std::mem::take(&mut name), std::mem::take(&mut indexed)))
            }
            _ if depth == 0 => name.push(c),
            _ => {}
        }
    }
    segments.push((name, indexed));
    let mut node = schema;
    for (name, indexed) in segments {
        let Some(next) = node.pointer(&format!("/properties/{name}")) else {
            return false;
        };
        node = match (indexed, next.get("items")) {
            (false, _) => next,
            (true, Some(items)) => items,
            (true, None) => return false,
        };
    }
    true
}

#[test]
fn every_crd_is_a_structural_schema() {
    for crd in crdgen::all() {
        let violations = structural_violations(&openapi(&crd));
        assert!(violations.is_empty(), "{}: {violations:#?}", kind(&crd));
    }
}

#[test]
fn unknown_fields_are_preserved_only_where_free_form_json_is_meant() {
    let expected: [(&str, &[&str]); 5] = [
        ("Tenant", &[]),
        ("Agent", &[]),
        ("Tool", &["spec.inputSchema"]),
        (
            "Workflow",
            &[
                "spec.input.schema",
                "spec.nodes[].end.result",
                "spec.nodes[].tool.args.*",
            ],
        ),
        ("FeatureFlag", &["spec.flags[].variants.*"]),
    ];
    let crds = crdgen::all();
    assert_eq!(crds.len(), expected.len());
    for (crd, (want_kind, want_paths)) in crds.iter().zip(expected) {
        assert_eq!(kind(crd), want_kind);
        let mut found = BTreeSet::new();
        preserve_unknown_paths(&openapi(crd), "<root>", &mut found);
        let want: BTreeSet<String> = want_paths.iter().map(|p| (*p).to_owned()).collect();
        assert_eq!(
            found, want,
            "{want_kind}: x-kubernetes-preserve-unknown-fields"
        );
    }
}

#[test]
fn every_field_has_a_description() {
    for crd in crdgen::all() {
        let schema = openapi(&crd);
        assert!(
            schema
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty()),
            "{}: the root needs a description",
            kind(&crd)
        );
        let mut missing = Vec::new();
        undescribed(&schema, "<root>", &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:?}",
            kind(&crd)
        );
    }
}

#[test]
fn defaults_are_admissible() {
    for crd in crdgen::all() {
        let mut bad = Vec::new();
        bad_defaults(&openapi(&crd), "<root>", &mut bad);
        assert!(bad.is_empty(), "{}: {bad:?}", kind(&crd));
    }
}

#[test]
fn every_crd_has_status_category_short_name_and_printer_columns() {
    let crds = crdgen::all();
    let kinds: Vec<&str> = crds.iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["Tenant", "Agent", "Tool", "Workflow", "FeatureFlag"]
    );
    let mut short_names = BTreeSet::new();
    for crd in &crds {
        let k = kind(crd);
        assert_eq!(crd.spec.group, "agentry.dev", "{k}");
        let expected_scope = if k == "Tenant" {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(crd.spec.scope, expected_scope, "{k}");
        assert_eq!(crd.spec.versions.len(), 1, "{k}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1", "{k}");
        assert!(version.served && version.storage, "{k}");
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            "{k}: status subresource"
        );
        assert!(
            crd.spec
                .names
                .categories
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == "agentry")),
            "{k}: category agentry"
        );
        let shorts = crd.spec.names.short_names.clone().unwrap_or_default();
        assert!(!shorts.is_empty(), "{k}: a short name");
        for short in shorts {
            assert!(
                short_names.insert(short.clone()),
                "{k}: short name {short} is taken"
            );
        }
        let columns = version
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(columns.len() >= 2, "{k}: printer columns");
        assert!(
            columns.iter().any(|c| c.name == "Ready"
                && c.json_path == ".status.conditions[?(@.type==\"Ready\")].status"),
            "{k}: a Ready column"
        );
        assert!(
            columns.iter().any(|c| c.name == "Age" && c.type_ == "date"),
            "{k}: an Age column"
        );
        let schema = openapi(crd);
        for column in &columns {
            assert!(
                resolves(&schema, &column.json_path),
                "{k}: printer column {} points at {}, which is not in the schema",
                column.name,
                column.json_path
            );
        }
    }
}

#[test]
fn status_has_conditions_keyed_by_type_and_observed_generation() {
    for crd in crdgen::all() {
        let k = kind(&crd).to_owned();
        let schema = openapi(&crd);
        let status = schema.pointer("/properties/status").expect("a status");
        let generation = status
            .pointer("/properties/observedGeneration")
            .expect("observedGeneration");
        assert_eq!(generation.get("type"), Some(&json!("integer")), "{k}");
        assert_eq!(generation.get("format"), Some(&json!("int64")), "{k}");
        let conditions = status
            .pointer("/properties/conditions")
            .expect("conditions");
        assert_eq!(conditions.get("type"), Some(&json!("array")), "{k}");
        assert_eq!(
            conditions.get("x-kubernetes-list-type"),
            Some(&json!("map")),
            "{k}"
        );
        assert_eq!(
            conditions.get("x-kubernetes-list-map-keys"),
            Some(&json!(["type"])),
            "{k}"
        );
        let item = &conditions["items"];
        for field in ["type", "status", "reason", "message", "lastTransitionTime"] {
            assert!(
                item["required"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!(field))),
                "{k}: conditions[].{field} is required (metav1.Condition)"
            );
        }
    }
}

#[test]
fn checker_rejects_non_structural_schemas() {
    let good = json!({
        "type": "object",
        "description": "ok",
        "properties": {
            "spec": {"type": "object", "description": "spec", "properties": {
                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "blob": {"x-kubernetes-preserve-unknown-fields": true},
                "list": {"type": "array", "x-kubernetes-list-type": "map",
                         "x-kubernetes-list-map-keys": ["name"],
                         "items": {"type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string"}}}},
                "either": {"type": "object",
                           "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                           "oneOf": [{"required": ["a"]}, {"required": ["b"]}]}
            }}
        }
    });
    assert_eq!(structural_violations(&good), Vec::<String>::new());

    let cases: [(&str, Value, &str); 9] = [
        (
            "missing type",
            json!({"type": "object", "properties": {"x": {"description": "no type"}}}),
            "x: type must be set",
        ),
        (
            "empty type",
            json!({"type": ""}),
            "<root>: type must be set",
        ),
        (
            "type inside anyOf",
            json!({"type": "object", "properties": {"x": {"type": "string", "anyOf": [{"type": "string"}]}}}),
            "x.anyOf[0]: type is not allowed",
        ),
        (
            "default inside allOf",
            json!({"type": "string", "allOf": [{"default": "a"}]}),
            "allOf[0]: default is not allowed",
        ),
        (
            "field only inside a junctor",
            json!({"type": "object", "oneOf": [{"properties": {"x": {"minLength": 1}}}]}),
            "field x is not specified outside",
        ),
        (
            "properties and additionalProperties",
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
            "mutually exclusive",
        ),
        (
            "list-map key neither required nor defaulted",
            json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                   "items": {"type": "object", "properties": {"name": {"type": "string"}}}}),
            "list-map key name must be required or defaulted",
        ),
        (
            "metadata restricted beyond name",
            json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
            "metadata.labels: only name and generateName",
        ),
        (
            "array without items",
            json!({"type": "array"}),
            "an array must specify items",
        ),
    ];
    for (what, schema, expected) in cases {
        let violations = structural_violations(&schema);
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "{what}: expected a violation containing {expected:?}, got {violations:?}"
        );
    }

    let mut missing = Vec::new();
    undescribed(
        &json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "description": " "}}}),
        "<root>",
        &mut missing,
    );
    assert_eq!(missing, ["a", "b"]);

    let mut found = BTreeSet::new();
    preserve_unknown_paths(&good, "<root>", &mut found);
    assert_eq!(found, BTreeSet::from(["spec.blob".to_owned()]));

    assert!(resolves(&good, ".spec.list[?(@.name==\"x\")].name"));
    assert!(!resolves(&good, ".spec.nope"));
}
