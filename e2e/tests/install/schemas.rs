//! Offline validation of rendered objects, each against the schema that would judge it in a
//! cluster:
//! - built-in kinds and CRDs: `kubernetes-validate --strict` (the upstream OpenAPI schemas, with
//!   unknown fields refused), for the oldest Kubernetes the chart supports and the newest known;
//! - `agentry.dev` kinds: the generated CRD schemas and their CEL rules
//!   (`agentry_crds::validate`), which kubernetes-validate does not know;
//! - Prometheus Operator and Argo CD kinds: no schema ships offline, so their shape is checked
//!   by hand here (and their contents by the tests of monitoring and Argo CD).

use std::process::Command;

use agentry_crds::bundle::ObjectKind;
use serde_json::Value;

use crate::support::{self, group, kind, name};

/// Kubernetes versions to validate against: the chart's `kubeVersion` floor and the newest.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Validates every object; panics with every problem found.
pub fn validate_all(label: &str, objects: &[Value]) {
    assert!(!objects.is_empty(), "{label}: nothing rendered");
    let mut problems = Vec::new();
    let mut builtin = Vec::new();
    for obj in objects {
        let id = format!("{}/{}", kind(obj), name(obj));
        if obj["apiVersion"].as_str().is_none() || name(obj).is_empty() {
            problems.push(format!("{id}: no apiVersion or metadata.name"));
            continue;
        }
        match group(obj) {
            "agentry.dev" => {
                problems.extend(agentry(obj).into_iter().map(|p| format!("{id}: {p}")))
            }
            "monitoring.coreos.com" => {
                problems.extend(monitoring(obj).into_iter().map(|p| format!("{id}: {p}")));
            }
            "argoproj.io" => problems.extend(argo(obj).into_iter().map(|p| format!("{id}: {p}"))),
            _ => builtin.push(obj),
        }
    }
    problems.extend(kubernetes_validate(label, &builtin));
    assert!(
        problems.is_empty(),
        "{label}: invalid objects:\n  {}",
        problems.join("\n  ")
    );
}

fn agentry(obj: &Value) -> Vec<String> {
    let kind = match kind(obj) {
        "Tenant" => ObjectKind::Tenant,
        "Agent" => ObjectKind::Agent,
        "Tool" => ObjectKind::Tool,
        "Workflow" => ObjectKind::Workflow,
        "FeatureFlag" => ObjectKind::FeatureFlag,
        other => return vec![format!("unknown agentry.dev kind {other}")],
    };
    let mut problems = agentry_crds::validate::validate_object(kind, obj);
    let namespaced = kind != ObjectKind::Tenant;
    if namespaced != obj["metadata"]["namespace"].is_string() {
        problems.push(format!(
            "metadata.namespace must be {} for a {kind}",
            if namespaced { "set" } else { "absent" }
        ));
    }
    problems
}

fn expect_fields(obj: &Value, pointers: &[&str]) -> Vec<String> {
    pointers
        .iter()
        .filter(|p| obj.pointer(p).is_none_or(Value::is_null))
        .map(|p| format!("missing {p}"))
        .collect()
}

fn monitoring(obj: &Value) -> Vec<String> {
    if obj["apiVersion"] != "monitoring.coreos.com/v1" {
        return vec![format!("unexpected apiVersion {}", obj["apiVersion"])];
    }
    match kind(obj) {
        "ServiceMonitor" => {
            let mut p = expect_fields(
                obj,
                &["/spec/selector/matchLabels", "/spec/endpoints/0/port"],
            );
            p.extend(durations(obj, "/spec/endpoints"));
            p
        }
        "PodMonitor" => {
            let mut p = expect_fields(
                obj,
                &[
                    "/spec/selector/matchLabels",
                    "/spec/podMetricsEndpoints/0/port",
                ],
            );
            p.extend(durations(obj, "/spec/podMetricsEndpoints"));
            p
        }
        "PrometheusRule" => {
            let mut p = expect_fields(obj, &["/spec/groups/0/name", "/spec/groups/0/rules/0/expr"]);
            for group in obj["spec"]["groups"].as_array().into_iter().flatten() {
                for rule in group["rules"].as_array().into_iter().flatten() {
                    let alert = rule["alert"].is_string();
                    if alert == rule["record"].is_string() {
                        p.push(format!(
                            "a rule must set exactly one of alert and record: {rule}"
                        ));
                    }
                    if rule["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                        p.push(format!("rule without expr: {rule}"));
                    }
                    if let Some(d) = rule["for"].as_str()
                        && !is_duration(d)
                    {
                        p.push(format!("bad `for` {d}"));
                    }
                }
            }
            p
        }
        other => vec![format!("unexpected kind {other}")],
    }
}

fn durations(obj: &Value, endpoints: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for endpoint in obj
        .pointer(endpoints)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for key in ["interval", "scrapeTimeout"] {
            if let Some(d) = endpoint[key].as_str()
                && !is_duration(d)
            {
                problems.push(format!("bad {key} {d}"));
            }
        }
    }
    problems
}

/// A Prometheus duration such as `30s`, `5m` or `1h30m`.
pub fn is_duration(d: &str) -> bool {
    !d.is_empty()
        && d.split_inclusive(|c: char| c.is_ascii_alphabetic())
            .all(|part| {
                let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &part[digits.len()..];
                !digits.is_empty()
                    && digits.chars().all(|c| c.is_ascii_digit())
                    && ["ms", "s", "m", "h", "d", "w", "y"].contains(&unit)
            })
}

fn argo(obj: &Value) -> Vec<String> {
    if obj["apiVersion"] != "argoproj.io/v1alpha1" {
        return vec![format!("unexpected apiVersion {}", obj["apiVersion"])];
    }
    match kind(obj) {
        "Application" => expect_fields(
            obj,
            &[
                "/spec/project",
                "/spec/source/repoURL",
                "/spec/source/targetRevision",
                "/spec/source/path",
                "/spec/destination/server",
                "/spec/destination/namespace",
            ],
        ),
        "ApplicationSet" => expect_fields(
            obj,
            &[
                "/spec/generators/0",
                "/spec/template/metadata/name",
                "/spec/template/spec/project",
                "/spec/template/spec/source/path",
                "/spec/template/spec/destination/namespace",
            ],
        ),
        "AppProject" => expect_fields(obj, &["/spec/sourceRepos/0", "/spec/destinations/0"]),
        other => vec![format!("unexpected kind {other}")],
    }
}

/// Runs kubernetes-validate over the objects and returns its complaints. A kind it has no
/// schema for is a complaint too (it only warns about those): every object sent here must be
/// one it knows.
fn kubernetes_validate(label: &str, objects: &[&Value]) -> Vec<String> {
    if objects.is_empty() {
        return vec![];
    }
    let dir = support::scratch("validate");
    let file = dir.join(format!("{}.yaml", label.replace(['/', ' '], "_")));
    let stream: Vec<String> = objects
        .iter()
        .map(|o| serde_json::to_string_pretty(o).expect("json"))
        .collect();
    // JSON is YAML: one document per object.
    std::fs::write(&file, stream.join("\n---\n")).expect("write objects");
    let mut cmd = Command::new(support::tool("venv/bin/kubernetes-validate"));
    cmd.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        cmd.args(["-k", version]);
    }
    cmd.arg(&file);
    let out = cmd.output().expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut problems: Vec<String> = stdout
        .lines()
        .filter(|l| !l.starts_with("INFO"))
        .map(str::to_owned)
        .collect();
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
        .count();
    let expected = objects.len() * KUBERNETES_VERSIONS.len();
    if passed != expected {
        problems.push(format!(
            "kubernetes-validate passed {passed} of {expected} (object, version) pairs:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if !out.status.success() && problems.is_empty() {
        problems.push(format!(
            "kubernetes-validate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    problems
}
