//! Workflows: node kinds, expressions, templates, references and the graph.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Checked, Problems, Ref};
use crate::bundle::hash::revision;
use crate::bundle::{
    CompiledWorkflow, ObjectKind, TenantConfig, WorkflowGraph, unbounded_cycle,
    validate_json_schema,
};
use crate::workflow::{Node, Workflow};

const DEFAULT_MAX_STEPS: u32 = 50;
const DEFAULT_TIMEOUT_SECONDS: u32 = 7 * 86_400;

/// The kind a node sets, or `None` when it sets none or several.
pub fn node_kind(node: &Node) -> Option<&'static str> {
    let kinds = [
        (node.agent.is_some(), "agent"),
        (node.llm.is_some(), "llm"),
        (node.tool.is_some(), "tool"),
        (node.retrieve.is_some(), "retrieve"),
        (node.branch.is_some(), "branch"),
        (node.parallel.is_some(), "parallel"),
        (node.transform.is_some(), "transform"),
        (node.approval.is_some(), "approval"),
        (node.handoff.is_some(), "handoff"),
        (node.end.is_some(), "end"),
    ];
    let mut set = kinds
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, k)| *k);
    match (set.next(), set.next()) {
        (Some(kind), None) => Some(kind),
        _ => None,
    }
}

pub(super) fn check(
    workflow: &Workflow,
    tenant: &TenantConfig,
) -> Result<Checked<CompiledWorkflow>, Vec<(String, String)>> {
    let name = workflow.name_any();
    let spec = &workflow.spec;
    let mut p = Problems::default();
    if !super::tenant::is_dns_label(&name) {
        p.add(
            "metadata.name",
            "a Workflow name must be a DNS label (at most 63 characters, no dots)",
        );
    }
    let input_schema = spec
        .input
        .as_ref()
        .and_then(|i| i.schema.clone())
        .unwrap_or_else(|| json!({"type": "object"}));
    if let Err(e) = validate_json_schema(&input_schema) {
        p.add(
            "spec.input.schema",
            format!("not a usable JSON Schema: {e}"),
        );
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut refs = Vec::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let field = format!("spec.nodes[{i}]");
        if nodes.insert(node.id.clone(), node.clone()).is_some() {
            p.add(
                format!("{field}.id"),
                format!("node id {:?} is used twice", node.id),
            );
        }
        check_node(&field, node, tenant, &mut p, &mut refs);
    }
    if !nodes.contains_key(&spec.start) {
        p.add(
            "spec.start",
            format!("start names node {:?}, which does not exist", spec.start),
        );
    }
    check_parallel_members(spec.nodes.as_slice(), &nodes, &spec.start, &mut p);
    let index: BTreeMap<&str, usize> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let graph = WorkflowGraph::new(&spec.nodes);
    for (id, field, target) in graph.unknown_targets() {
        let at = index.get(id.as_str()).copied().unwrap_or_default();
        p.add(
            format!("spec.nodes[{at}].{field}"),
            format!("node {id:?} points to {target:?}, which is not a node"),
        );
    }
    if nodes.contains_key(&spec.start) {
        for id in graph.unreachable_from(&spec.start) {
            let at = index.get(id.as_str()).copied().unwrap_or_default();
            p.add(
                format!("spec.nodes[{at}]"),
                format!("node {id:?} is unreachable from start {:?}", spec.start),
            );
        }
    }
    if let Some(cycle) = unbounded_cycle(&graph) {
        p.add(
            "spec.nodes",
            format!(
                "cycle {} has no bound: set maxVisits on one of its nodes",
                cycle.join(" -> ")
            ),
        );
    }
    let limits = spec.limits.clone().unwrap_or_default();
    let mut compiled = CompiledWorkflow {
        name,
        description: spec.description.clone(),
        input_schema,
        start: spec.start.clone(),
        max_steps: limits.max_steps.unwrap_or(DEFAULT_MAX_STEPS),
        timeout_seconds: limits.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        nodes,
        revision: String::new(),
    };
    compiled.revision = revision(&compiled);
    p.finish(compiled, refs)
}

fn check_node(
    field: &str,
    node: &Node,
    tenant: &TenantConfig,
    p: &mut Problems,
    refs: &mut Vec<Ref>,
) {
    if node_kind(node).is_none() {
        p.add(
            field,
            "a node sets exactly one of agent, llm, tool, retrieve, branch, parallel, transform, approval, handoff, end",
        );
    }
    if node.end.is_some() && node.next.is_some() {
        p.add(format!("{field}.next"), "an end node has no next");
    }
    if let Some(agent) = &node.agent {
        refs.push(Ref::new(
            format!("{field}.agent.name"),
            ObjectKind::Agent,
            &agent.name,
        ));
        p.template(format!("{field}.agent.prompt"), &agent.prompt);
    }
    if let Some(llm) = &node.llm {
        if !tenant.models.contains_key(&llm.model) {
            p.add(
                format!("{field}.llm.model"),
                format!("model {:?} is not in the Tenant's spec.models", llm.model),
            );
        }
        p.template(format!("{field}.llm.prompt"), &llm.prompt);
        if let Some(system) = &llm.system {
            p.template(format!("{field}.llm.system"), system);
        }
    }
    if let Some(tool) = &node.tool {
        refs.push(Ref::new(
            format!("{field}.tool.name"),
            ObjectKind::Tool,
            &tool.name,
        ));
        for (key, value) in &tool.args {
            check_value_templates(&format!("{field}.tool.args.{key}"), value, p);
        }
    }
    if let Some(retrieve) = &node.retrieve {
        p.template(format!("{field}.retrieve.query"), &retrieve.query);
    }
    for (j, case) in node.branch.iter().flatten().enumerate() {
        p.cel(format!("{field}.branch[{j}].when"), &case.when);
    }
    if let Some(t) = &node.transform {
        if t.cel.is_empty() && t.template.is_empty() {
            p.add(
                format!("{field}.transform"),
                "a transform sets cel or template",
            );
        }
        for (key, expr) in &t.cel {
            check_state_key(&format!("{field}.transform.cel.{key}"), key, p);
            p.cel(format!("{field}.transform.cel.{key}"), expr);
        }
        for (key, source) in &t.template {
            check_state_key(&format!("{field}.transform.template.{key}"), key, p);
            p.template(format!("{field}.transform.template.{key}"), source);
        }
    }
    if let Some(a) = &node.approval {
        p.template(format!("{field}.approval.message"), &a.message);
    }
    if let Some(h) = &node.handoff {
        p.template(format!("{field}.handoff.reason"), &h.reason);
    }
    if let Some(result) = node.end.as_ref().and_then(|e| e.result.as_ref()) {
        check_value_templates(&format!("{field}.end.result"), result, p);
    }
}

fn check_state_key(field: &str, key: &str, p: &mut Problems) {
    let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= 63;
    if !ok {
        p.add(field, format!("state key {key:?} must be an identifier"));
    }
}

fn check_value_templates(field: &str, value: &Value, p: &mut Problems) {
    match value {
        Value::String(s) => p.template(field, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_value_templates(&format!("{field}[{i}]"), item, p);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_value_templates(&format!("{field}.{k}"), v, p);
            }
        }
        _ => {}
    }
}

/// Members of a parallel node run once each and return: only kinds that produce a value, no
/// `next`, and not the start node.
fn check_parallel_members(
    list: &[Node],
    nodes: &BTreeMap<String, Node>,
    start: &str,
    p: &mut Problems,
) {
    for (i, node) in list.iter().enumerate() {
        let Some(parallel) = &node.parallel else {
            continue;
        };
        for (j, member) in parallel.nodes.iter().enumerate() {
            let field = format!("spec.nodes[{i}].parallel.nodes[{j}]");
            let Some(target) = nodes.get(member) else {
                continue;
            };
            if !matches!(
                node_kind(target),
                Some("agent" | "llm" | "tool" | "retrieve" | "transform")
            ) {
                p.add(&field, format!("node {member:?} must be an agent, llm, tool, retrieve or transform node to run in parallel"));
            }
            if target.next.is_some() {
                p.add(
                    &field,
                    format!("node {member:?} runs in parallel and must not set next"),
                );
            }
            if member == start || *member == node.id {
                p.add(
                    &field,
                    format!("node {member:?} cannot run in parallel here"),
                );
            }
        }
    }
}
