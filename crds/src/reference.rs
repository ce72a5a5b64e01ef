//! The API reference (`docs/api.md`), generated from the CRD schemas so it cannot drift.

use std::fmt::Write as _;

use serde_json::Value;

use crate::crdgen;

/// One example per kind, shown in the reference; a test validates each against its schema.
pub const EXAMPLES: [(&str, &str); 5] = [
    ("Tenant", include_str!("reference/tenant.yaml")),
    ("Agent", include_str!("reference/agent.yaml")),
    ("Tool", include_str!("reference/tool.yaml")),
    ("Workflow", include_str!("reference/workflow.yaml")),
    ("FeatureFlag", include_str!("reference/featureflag.yaml")),
];

const INTRO: &str = "# API reference: agentry.dev/v1alpha1

<!-- Generated from the agentry-crds types by `make crds`. Do not edit. -->

Agentry's public API is five custom resources in the group `agentry.dev`, version `v1alpha1`.
A `Tenant` is cluster-scoped and owns a namespace (`spec.namespace`, default `tenant-<name>`);
its `Agent`s, `Tool`s, `Workflow`s and `FeatureFlag`s live in that namespace. Every kind has a
status subresource with `observedGeneration` and `conditions` (a list keyed by `type`), short
names, printer columns, and belongs to the category `agentry` (`kubectl get agentry`).

The operator compiles a tenant's resources into one runtime bundle. An object that is invalid
gets `Ready=False` with a message naming the field and the problem, and is left out of the
bundle; the rest of the tenant keeps serving. Rules the API server can check are in the schema
(patterns, bounds, enums, CEL `x-kubernetes-validations`); rules that need other objects
(references, workflow graphs, CEL and template syntax) are checked by the compiler.

Conventions: money is a decimal string in USD (`\"500.00\"`, at most six decimals) and is
handled as integer micro-dollars; templates are minijinja (`{{ args.orderId }}`); conditions
and expressions are CEL.
";

/// Renders the reference.
pub fn markdown() -> String {
    let mut out = String::from(INTRO);
    for crd in crdgen::all() {
        let names = &crd.spec.names;
        let kind = names.kind.as_str();
        let version = crd.spec.versions.first();
        let schema = version
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let _ = writeln!(out, "\n## {kind}\n");
        let _ = writeln!(
            out,
            "Scope: {}. Plural `{}`, short name{} {}.\n",
            crd.spec.scope,
            names.plural,
            if names.short_names.as_ref().map_or(0, Vec::len) > 1 {
                "s"
            } else {
                ""
            },
            names
                .short_names
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", d.trim());
        }
        if let Some((_, example)) = EXAMPLES.iter().find(|(k, _)| *k == kind) {
            let _ = writeln!(out, "```yaml\n{}```\n", example);
        }
        if let Some(rules) = schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            let _ = writeln!(out, "Object rules:\n");
            for r in rules {
                let _ = writeln!(
                    out,
                    "- {}",
                    r.get("message").and_then(Value::as_str).unwrap_or_default()
                );
            }
            out.push('\n');
        }
        for section in ["spec", "status"] {
            let Some(s) = schema.pointer(&format!("/properties/{section}")) else {
                continue;
            };
            let _ = writeln!(out, "### {kind} `.{section}`\n");
            let _ = writeln!(out, "| Field | Type | Description |\n| --- | --- | --- |");
            let required = schema
                .get("required")
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|x| x == section));
            rows(&mut out, section, s, required);
            out.push('\n');
        }
        if let Some(cols) = version.and_then(|v| v.additional_printer_columns.as_ref()) {
            let names: Vec<String> = cols.iter().map(|c| format!("`{}`", c.name)).collect();
            let _ = writeln!(out, "`kubectl get` columns: {}.\n", names.join(", "));
        }
    }
    out
}

fn rows(out: &mut String, path: &str, schema: &Value, required: bool) {
    let mut ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("any")
        .to_owned();
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        ty = "int-or-string".to_owned();
    }
    if ty == "array"
        && let Some(items) = schema
            .get("items")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
    {
        ty = format!("[]{items}");
    }
    let mut notes: Vec<String> = Vec::new();
    if required {
        notes.push("required".into());
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        notes.push(format!(
            "one of {}",
            e.iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (key, label) in [
        ("pattern", "pattern"),
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(v) = schema.get(key) {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            notes.push(format!("{label} `{}`", v.replace('|', "\\|")));
        }
    }
    if let Some(keys) = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
    {
        notes.push(format!(
            "list keyed by `{}`",
            keys.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            notes.push(format!(
                "rule: {}",
                r.get("message").and_then(Value::as_str).unwrap_or_default()
            ));
        }
    }
    let description = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .replace('\n', " ")
        .replace('|', "\\|");
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" _({})_", notes.join("; "))
    };
    let _ = writeln!(out, "| `{path}` | {ty} | {description}{notes} |");

    let children = schema
        .get("properties")
        .or_else(|| schema.get("items").and_then(|i| i.get("properties")));
    let child_required = schema
        .get("required")
        .or_else(|| schema.get("items").and_then(|i| i.get("required")))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_array = schema.get("items").is_some();
    // Kubernetes core types (ResourceRequirements, Condition) are documented upstream.
    let upstream = path.ends_with(".resources") || path.ends_with(".conditions");
    if let Some(Value::Object(props)) = children
        && !upstream
    {
        for (name, child) in props {
            let child_path = if is_array {
                format!("{path}[].{name}")
            } else {
                format!("{path}.{name}")
            };
            rows(
                out,
                &child_path,
                child,
                child_required.iter().any(|r| r == name.as_str()),
            );
        }
    }
}
