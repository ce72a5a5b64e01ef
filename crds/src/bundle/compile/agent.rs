//! Agents: model choice, tools, handoffs, prompt.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::{Checked, Problems, Ref};
use crate::agent::Agent;
use crate::bundle::hash::revision;
use crate::bundle::{CompiledAgent, ObjectKind, TenantConfig};

const DEFAULT_MAX_TOOL_ITERATIONS: u32 = 6;
const DEFAULT_MEMORY_WINDOW: u32 = 20;

pub(super) fn check(
    agent: &Agent,
    tenant: &TenantConfig,
    flag_keys: &BTreeSet<String>,
) -> Result<Checked<CompiledAgent>, Vec<(String, String)>> {
    let name = agent.name_any();
    let spec = &agent.spec;
    let mut p = Problems::default();
    if !super::tenant::is_dns_label(&name) {
        p.add(
            "metadata.name",
            "an Agent name must be a DNS label (at most 63 characters, no dots)",
        );
    }
    match (&spec.model.name, &spec.model.router) {
        (Some(model), None) if !tenant.models.contains_key(model) => {
            p.add(
                "spec.model.name",
                format!("model {model:?} is not in the Tenant's spec.models"),
            );
        }
        (Some(_), None) | (None, Some(_)) => {}
        _ => p.add("spec.model", "set exactly one of name and router"),
    }
    for (i, fallback) in spec.model.fallbacks.iter().enumerate() {
        if !tenant.models.contains_key(fallback) {
            p.add(
                format!("spec.model.fallbacks[{i}]"),
                format!("model {fallback:?} is not in the Tenant's spec.models"),
            );
        }
    }
    if let Some(flag) = &spec.model.flag
        && !flag_keys.contains(flag)
    {
        p.add(
            "spec.model.flag",
            format!("flag {flag:?} is not declared by any FeatureFlag"),
        );
    }
    if let Some(prompt) = &spec.system_prompt {
        p.template("spec.systemPrompt", prompt);
    }
    let mut refs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, tool) in spec.tools.iter().enumerate() {
        if !seen.insert(tool) {
            p.add(
                format!("spec.tools[{i}]"),
                format!("tool {tool:?} is listed twice"),
            );
        }
        refs.push(Ref::new(format!("spec.tools[{i}]"), ObjectKind::Tool, tool));
    }
    for (i, target) in spec.handoffs.iter().enumerate() {
        if *target == name {
            p.add(
                format!("spec.handoffs[{i}]"),
                "an agent cannot hand off to itself",
            );
        }
        refs.push(Ref::new(
            format!("spec.handoffs[{i}]"),
            ObjectKind::Agent,
            target,
        ));
    }
    let mut compiled = CompiledAgent {
        name,
        description: spec.description.clone(),
        model: spec.model.name.clone(),
        router: spec.model.router.clone(),
        fallbacks: spec.model.fallbacks.clone(),
        model_flag: spec.model.flag.clone(),
        system_prompt: spec.system_prompt.clone(),
        tools: spec.tools.clone(),
        handoffs: spec.handoffs.clone(),
        knowledge: spec.knowledge.clone(),
        temperature: spec.temperature,
        max_tokens: spec.max_tokens,
        max_tool_iterations: spec
            .max_tool_iterations
            .unwrap_or(DEFAULT_MAX_TOOL_ITERATIONS),
        memory_window: spec
            .memory
            .as_ref()
            .map_or(DEFAULT_MEMORY_WINDOW, |m| m.window_messages),
        revision: String::new(),
    };
    compiled.revision = revision(&compiled);
    p.finish(compiled, refs)
}
