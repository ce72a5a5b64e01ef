//! Tools: type blocks, templates, schema, resilience defaults.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Checked, Problems, Ref};
use crate::bundle::hash::revision;
use crate::bundle::{
    CompiledTool, ObjectKind, ResilienceConfig, TenantConfig, validate_json_schema,
};
use crate::tool::{BuiltinName, HttpHeader, Tool, ToolType};

const DEFAULT_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_INITIAL_BACKOFF_MS: u32 = 100;
const DEFAULT_MAX_BACKOFF_MS: u32 = 2_000;

pub(super) fn check(
    tool: &Tool,
    tenant: &TenantConfig,
) -> Result<Checked<CompiledTool>, Vec<(String, String)>> {
    let name = tool.name_any();
    let spec = &tool.spec;
    let mut p = Problems::default();
    if !super::tenant::is_dns_label(&name) {
        p.add(
            "metadata.name",
            "a Tool name must be a DNS label (at most 63 characters, no dots)",
        );
    }
    let blocks = [
        (ToolType::Http, spec.http.is_some(), "http"),
        (ToolType::Mcp, spec.mcp.is_some(), "mcp"),
        (ToolType::Builtin, spec.builtin.is_some(), "builtin"),
    ];
    for (type_, present, field) in blocks {
        if (spec.type_ == type_) != present {
            p.add(
                format!("spec.{field}"),
                format!("spec.{field} must be set exactly when spec.type is {field}"),
            );
        }
    }
    let input_schema = spec
        .input_schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}));
    if let Err(e) = validate_json_schema(&input_schema) {
        p.add("spec.inputSchema", format!("not a usable JSON Schema: {e}"));
    } else if input_schema
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "object")
    {
        p.add(
            "spec.inputSchema",
            "tool arguments are a JSON object: the schema's type must be object",
        );
    }
    if let Some(http) = &spec.http {
        if !(http.url.starts_with("http://") || http.url.starts_with("https://")) {
            p.add("spec.http.url", "only http and https URLs are allowed");
        }
        p.template("spec.http.url", &http.url);
        if let Some(body) = &http.body {
            p.template("spec.http.body", body);
        }
        check_headers("spec.http.headers", &http.headers, &mut p);
    }
    if let Some(mcp) = &spec.mcp {
        if !(mcp.url.starts_with("http://") || mcp.url.starts_with("https://")) {
            p.add("spec.mcp.url", "only http and https URLs are allowed");
        }
        check_headers("spec.mcp.headers", &mcp.headers, &mut p);
    }
    let mut refs = Vec::new();
    if let Some(builtin) = &spec.builtin {
        match (builtin.name, &builtin.workflow) {
            (BuiltinName::RunWorkflow, Some(workflow)) => {
                refs.push(Ref::new(
                    "spec.builtin.workflow",
                    ObjectKind::Workflow,
                    workflow,
                ));
            }
            (BuiltinName::RunWorkflow, None) => {
                p.add("spec.builtin.workflow", "run_workflow needs a workflow")
            }
            (_, Some(_)) => p.add(
                "spec.builtin.workflow",
                "only run_workflow takes a workflow",
            ),
            (_, None) => {}
        }
    }
    let r = spec.resilience.clone().unwrap_or_default();
    let retries = r.retries.clone().unwrap_or_default();
    let resilience = ResilienceConfig {
        timeout_ms: r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        max_retries: retries.max,
        initial_backoff_ms: retries
            .initial_backoff_ms
            .unwrap_or(DEFAULT_INITIAL_BACKOFF_MS),
        max_backoff_ms: retries.max_backoff_ms.unwrap_or(DEFAULT_MAX_BACKOFF_MS),
        retry_non_idempotent: retries.retry_non_idempotent,
        circuit_failure_threshold: r.circuit_breaker.as_ref().map(|c| c.failure_threshold),
        circuit_open_seconds: r.circuit_breaker.as_ref().map(|c| c.open_seconds),
        max_concurrency: r.max_concurrency,
    };
    if resilience.initial_backoff_ms > resilience.max_backoff_ms {
        p.add(
            "spec.resilience.retries",
            "initialBackoffMs must not exceed maxBackoffMs",
        );
    }
    let mut egress_allow_hosts = tenant.egress_allowlist.clone();
    egress_allow_hosts.extend(
        spec.egress
            .iter()
            .flat_map(|e| e.allow_hosts.iter().cloned()),
    );
    egress_allow_hosts.sort();
    egress_allow_hosts.dedup();
    let mut compiled = CompiledTool {
        name,
        description: spec.description.clone(),
        type_: spec.type_,
        input_schema,
        http: spec.http.clone(),
        mcp: spec.mcp.clone(),
        builtin: spec.builtin.clone(),
        resilience,
        require_approval: spec.require_approval,
        egress_allow_hosts,
        revision: String::new(),
    };
    compiled.revision = revision(&compiled);
    p.finish(compiled, refs)
}

fn check_headers(field: &str, headers: &[HttpHeader], p: &mut Problems) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, h) in headers.iter().enumerate() {
        if h.value.is_some() == h.value_from.is_some() {
            p.add(
                format!("{field}[{i}]"),
                "a header sets exactly one of value and valueFrom",
            );
        }
        if !seen.insert(h.name.to_ascii_lowercase()) {
            p.add(
                format!("{field}[{i}].name"),
                format!("header {:?} is set twice", h.name),
            );
        }
    }
}
