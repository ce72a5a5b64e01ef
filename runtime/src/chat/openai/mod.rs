//! An OpenAI-compatible surface (`GET /v1/models`, `POST /v1/chat/completions`, scope
//! `chat`), so that OpenAI client libraries can talk to a tenant. A model is either
//! `agent/<name>` (the agent loop, with its tools, on a conversation created for the request)
//! or a catalog model (one metered model call, with the client's function tools if any).
//! Errors have OpenAI's shape ([`errors`]); `docs/openai-compat.md` is the user-facing
//! description.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::agents::store::{self, NewConversation, OpeningMessage};
use crate::agents::{Turn, TurnEvent, meter};
use crate::error::{ApiError, ApiResult};
use crate::gateway::{Caller, Scope};
use crate::http::ApiJson;
use crate::llm::{ChatRequest, Message, Role};
use crate::state::AppState;

mod answer;
pub mod errors;
mod sse;
pub mod wire;

pub use wire::{CompletionsRequest, OpenAiMessage};

/// Routes of the OpenAI-compatible API. Wrap them (authentication included) in
/// [`errors::rewrite`] so that every error has OpenAI's shape.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(completions))
}

/// Lists `agent/<name>` for every agent and every catalog model.
#[utoipa::path(
    get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses(
        (status = 200, description = "OpenAI model list", body = Object),
        (status = 401, description = "Invalid API key (OpenAI error shape)", body = Object),
    )
)]
async fn list_models(Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require(Scope::Chat)?;
    let bundle = caller.tenant.bundle();
    let owner = &bundle.tenant.name;
    let data: Vec<Value> = bundle
        .agents
        .keys()
        .map(|a| format!("agent/{a}"))
        .chain(bundle.tenant.models.keys().cloned())
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Answers a chat completion, streamed (`stream: true`) or not.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body = CompletionsRequest,
    responses(
        (status = 200, description = "OpenAI chat completion (or chunks over SSE)", body = Object),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = Object),
        (status = 401, description = "Invalid API key (OpenAI error shape)", body = Object),
        (status = 404, description = "Unknown model, code `model_not_found` (OpenAI error shape)", body = Object),
        (status = 429, description = "Rate limit (`rate_limit_exceeded`) or spent budget (`insufficient_quota`)", body = Object),
        (status = 502, description = "Every model failed (OpenAI error shape)", body = Object),
    )
)]
async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CompletionsRequest>,
) -> ApiResult<Response> {
    caller.require(Scope::Chat)?;
    let bundle = caller.tenant.bundle();
    let messages = body.messages()?;
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(
            ApiError::invalid("messages must hold at least one user message")
                .with_param("messages"),
        );
    }
    let agent = body.model.strip_prefix("agent/");
    let known = match agent {
        Some(agent) => bundle.agents.contains_key(agent),
        None => bundle.tenant.models.contains_key(&body.model),
    };
    if !known {
        return Err(errors::unknown_model(&body.model));
    }
    if agent.is_some() && body.has_tools() {
        return Err(ApiError::invalid(
            "an agent runs its own tools on the server; client tools are for catalog models",
        )
        .with_param("tools"));
    }
    let tools = body.tools()?;
    let id = format!("chatcmpl-{}", Uuid::now_v7().simple());
    let permit = if body.stream {
        Some(
            state
                .limiter
                .acquire_stream(&caller.tenant)
                .inspect_err(|e| state.metrics.rejected(&caller.tenant.name, e.limit))?,
        )
    } else {
        None
    };
    if let Some(agent) = agent {
        // The agent's path is boxed: its database calls would otherwise make this handler's
        // future (moved by value on every request, catalog models' too) ~18 KB.
        let (conversation, history) =
            Box::pin(start_conversation(&state, &caller, agent, &messages)).await?;
        let agent = agent.to_owned();
        if let Some(permit) = permit {
            let (tx, rx) = mpsc::unbounded_channel::<TurnEvent>();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _permit = permit;
                let result = Turn::new(state, caller, conversation, agent, Some(tx))
                    .with_history(history)
                    .run()
                    .await;
                let _ = done_tx.send(result.map(|r| sse::Finished::text(r.usage)));
            });
            let chunks = sse::Chunks::new(id, body.model.clone(), body.include_usage());
            return sse::respond(chunks, rx, done_rx).await;
        }
        let result = Box::pin(
            Turn::new(state, caller, conversation, agent, None)
                .with_history(history)
                .run(),
        )
        .await?;
        let content = match (&result.message, &result.approval) {
            (Some(m), _) => m.content.clone(),
            (None, Some(a)) => format!(
                "The call of {} needs a person's approval (approval {}).",
                a.tool, a.approval_id
            ),
            (None, None) => String::new(),
        };
        let finished = sse::Finished::text(result.usage);
        return Ok(Json(answer::Completion::new(
            &id,
            &body.model,
            &content,
            &finished,
        ))
        .into_response());
    }
    let request = ChatRequest {
        messages,
        tools,
        max_tokens: body.max_tokens(),
        temperature: body.temperature,
        json_mode: body.json_mode(),
    };
    let plan = vec![body.model.clone()];
    if let Some(permit) = permit {
        let (tx, rx) = mpsc::unbounded_channel::<TurnEvent>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _permit = permit;
            let on_token = move |delta: String| {
                let _ = tx.send(TurnEvent::Token { delta });
            };
            let result = metered(&state, &caller, &plan, &request, Some(&on_token)).await;
            drop(on_token);
            let _ = done_tx.send(result.map(|c| sse::Finished::completion(&c)));
        });
        let chunks = sse::Chunks::new(id, body.model.clone(), body.include_usage());
        return sse::respond(chunks, rx, done_rx).await;
    }
    let c = metered(&state, &caller, &plan, &request, None).await?;
    let finished = sse::Finished::completion(&c);
    Ok(Json(answer::Completion::new(
        &id,
        &body.model,
        &c.content,
        &finished,
    ))
    .into_response())
}

/// One metered call of a catalog model, with its usage row.
async fn metered(
    state: &AppState,
    caller: &Caller,
    plan: &[String],
    request: &ChatRequest,
    on_token: Option<&(dyn Fn(String) + Sync)>,
) -> Result<crate::llm::Completion, ApiError> {
    let bundle = caller.tenant.bundle();
    let c = meter::call(state, caller, &bundle, plan, request, on_token).await?;
    // Queued before the answer is sent; written in a batch (see billing::usage).
    state
        .usage
        .record(crate::billing::UsageRow::of(caller, &c))
        .await?;
    Ok(c)
}

/// A conversation holding the request's messages, for the agent loop to answer; returns it
/// with those messages as the model is to see them.
async fn start_conversation(
    state: &AppState,
    caller: &Caller,
    agent: &str,
    messages: &[Message],
) -> Result<(Uuid, Vec<Message>), ApiError> {
    // The agent brings its own system prompt and runs its own tools: only the text of user
    // and assistant messages is stored (a client's tool messages would answer calls the
    // conversation never made).
    let kept: Vec<&Message> = messages
        .iter()
        .filter(|m| matches!(m.role, Role::User | Role::Assistant))
        .filter(|m| m.role == Role::User || !m.content.is_empty())
        .collect();
    let opening: Vec<OpeningMessage<'_>> = kept
        .iter()
        .map(|m| OpeningMessage {
            role: m.role.as_str(),
            content: &m.content,
            agent: Some(agent),
        })
        .collect();
    let mut statement = state.db.statement(caller.tenant.id).await?;
    let conversation = store::create_conversation(
        statement.conn(),
        caller,
        &NewConversation {
            agent: Some(agent),
            metadata: Some(&json!({"source": "openai"})),
            messages: &opening,
            ..NewConversation::default()
        },
    )
    .await?;
    statement.finish().await?;
    let history = kept
        .into_iter()
        .map(|m| Message::new(m.role, m.content.clone()))
        .collect();
    Ok((conversation.id, history))
}
