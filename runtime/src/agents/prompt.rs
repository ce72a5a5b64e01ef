//! The request an agent sends: its system prompt (a minijinja template), the handoff line
//! the offline provider reads, the memory window and the tools it offers.

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::CompiledAgent;
use serde_json::json;

use crate::gateway::Caller;
use crate::llm::{ChatRequest, Message, ToolDefinition};

/// Renders the agent's system prompt over `tenant`, `agent`, `user` and `now`, then states
/// the agents it may transfer to. A template that fails to render is used as written: a
/// typo in a prompt should not take the agent down.
pub fn system_prompt(bundle: &RuntimeBundle, agent: &CompiledAgent, caller: &Caller) -> String {
    let template = agent.system_prompt.as_deref().unwrap_or_default();
    let ctx = json!({
        "tenant": {
            "name": bundle.tenant.name,
            "displayName": bundle.tenant.display_name.as_deref().unwrap_or(&bundle.tenant.name),
            "plan": bundle.tenant.plan,
        },
        "agent": {"name": agent.name, "description": agent.description},
        "user": {"id": caller.user_id()},
        "now": chrono::Utc::now().to_rfc3339(),
    });
    let env = minijinja::Environment::new();
    let mut prompt = match env.render_str(
        template,
        minijinja::Value::from(minijinja::value::Serde(&ctx)),
    ) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(tenant = %bundle.tenant.name, agent = %agent.name, error = %e, "system prompt does not render");
            template.to_owned()
        }
    };
    if !agent.handoffs.is_empty() {
        if !prompt.is_empty() && !prompt.ends_with('\n') {
            prompt.push('\n');
        }
        prompt.push_str("You can transfer to: ");
        prompt.push_str(&agent.handoffs.join(", "));
        prompt.push('\n');
    }
    prompt
}

/// The tools the agent offers, in its order (tools missing from the bundle are left out;
/// the compiler reports them).
pub fn tool_definitions(bundle: &RuntimeBundle, agent: &CompiledAgent) -> Vec<ToolDefinition> {
    agent
        .tools
        .iter()
        .filter_map(|name| bundle.tools.get(name))
        .map(|t| ToolDefinition {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.input_schema.clone(),
        })
        .collect()
}

/// One model request: system prompt, the memory window, and tools unless `with_tools` is off
/// (the last iteration must answer in text).
pub fn request(
    bundle: &RuntimeBundle,
    agent: &CompiledAgent,
    caller: &Caller,
    history: Vec<Message>,
    with_tools: bool,
) -> ChatRequest {
    let mut messages = Vec::with_capacity(history.len() + 1);
    let system = system_prompt(bundle, agent, caller);
    if !system.is_empty() {
        messages.push(Message::system(system));
    }
    messages.extend(history);
    ChatRequest {
        messages,
        tools: if with_tools {
            tool_definitions(bundle, agent)
        } else {
            Vec::new()
        },
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        json_mode: false,
    }
}
