//! Which models a call tries (primary, from the agent or its model flag, then fallbacks) and
//! what it may cost (the budget and token estimates reserved before the call).

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::CompiledAgent;

use crate::flags;
use crate::gateway::Caller;
use crate::llm::cost::estimate_input_tokens;
use crate::llm::{ChatRequest, Prices, Usage};

/// Output tokens assumed when the agent sets no `maxTokens`.
const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The primary model then the fallbacks. The primary is the string variant of `model_flag`
/// when it names a catalog model, else `model`, else the first catalog model.
pub fn plan(bundle: &RuntimeBundle, agent: &CompiledAgent, caller: &Caller) -> Vec<String> {
    let ctx = flags::context(bundle, caller, flags::Subject::Agent(&agent.name));
    let flagged = agent
        .model_flag
        .as_ref()
        .and_then(|f| bundle.flags.get(f))
        .and_then(|f| flags::eval::evaluate(f, &ctx))
        .and_then(|(_, v)| v.as_str())
        .filter(|m| bundle.tenant.models.contains_key(*m))
        .map(str::to_owned);
    let primary = flagged
        .or_else(|| agent.model.clone())
        .or_else(|| bundle.tenant.models.keys().next().cloned());
    let mut models: Vec<String> = primary.into_iter().collect();
    for f in &agent.fallbacks {
        if !models.contains(f) {
            models.push(f.clone());
        }
    }
    models
}

/// (cost in micro-dollars, tokens) to reserve: the prompt estimate at the input price plus
/// `max_tokens` at the output price, at the dearest model of the plan.
pub fn estimate(bundle: &RuntimeBundle, plan: &[String], request: &ChatRequest) -> (i64, u32) {
    let usage = Usage {
        input_tokens: estimate_input_tokens(request),
        output_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
    };
    let micros = plan
        .iter()
        .filter_map(|m| bundle.tenant.models.get(m))
        .map(|m| Prices::from(m).cost_micros(usage))
        .max()
        .unwrap_or(0);
    let tokens = usage.input_tokens.saturating_add(usage.output_tokens);
    (micros, tokens)
}
