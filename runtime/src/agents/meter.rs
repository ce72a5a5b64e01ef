//! One metered model call: token-rate admission and a budget reservation before, the actual
//! tokens and cost after (also when every model failed), streamed or not.

use agentry_crds::RuntimeBundle;
use futures::StreamExt as _;

use super::models;
use crate::error::ApiError;
use crate::gateway::Caller;
use crate::llm::{ChatRequest, Completion, LlmError, StreamEvent};
use crate::state::AppState;

/// Calls `plan` (primary then fallbacks) with `request`. With `on_token` the call streams and
/// each text delta is handed to it as it arrives.
pub async fn call(
    state: &AppState,
    caller: &Caller,
    bundle: &RuntimeBundle,
    plan: &[String],
    request: &ChatRequest,
    on_token: Option<&(dyn Fn(String) + Sync)>,
) -> Result<Completion, ApiError> {
    let (estimate_micros, estimate_tokens) = models::estimate(bundle, plan, request);
    let tenant_name = &caller.tenant.name;
    if let Err(e) = state.limiter.check_tokens(caller, estimate_tokens) {
        state.metrics.rejected(tenant_name, e.limit);
        return Err(e.into());
    }
    let reservation = match state.budgets.reserve(&caller.tenant, estimate_micros).await {
        Ok(r) => r,
        Err(e) => {
            state.limiter.record_tokens(caller, 0);
            state.metrics.rejected(tenant_name, "budget");
            return Err(e);
        }
    };
    let result = match on_token {
        Some(on_token) => stream(state, bundle, plan, request, on_token).await,
        None => state
            .llm
            .complete(bundle, plan, request)
            .await
            .map_err(llm_error),
    };
    let (tokens, cost) = match &result {
        Ok(c) => (
            u32::try_from(c.usage.total()).unwrap_or(u32::MAX),
            c.cost_micros,
        ),
        Err(_) => (0, 0),
    };
    state.limiter.record_tokens(caller, tokens);
    state.budgets.settle(reservation, cost).await?;
    result
}

async fn stream(
    state: &AppState,
    bundle: &RuntimeBundle,
    plan: &[String],
    request: &ChatRequest,
    on_token: &(dyn Fn(String) + Sync),
) -> Result<Completion, ApiError> {
    let mut stream = state
        .llm
        .stream(bundle, plan, request)
        .await
        .map_err(llm_error)?;
    while let Some(event) = stream.next().await {
        match event.map_err(llm_error)? {
            StreamEvent::Delta(delta) => on_token(delta),
            StreamEvent::ToolCall(_) => {}
            StreamEvent::Done(completion) => return Ok(completion),
        }
    }
    Err(ApiError::new(
        axum::http::StatusCode::BAD_GATEWAY,
        "upstream_bad_response",
        "the model stream ended without an answer",
    ))
}

/// A model failure as the API reports it: 502 with the gateway's code.
pub fn llm_error(e: LlmError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_GATEWAY,
        e.code(),
        format!("the model call failed: {e}"),
    )
}
