//! An OpenAI-compatible surface (`GET /v1/models`, `POST /v1/chat/completions`, scope
//! `chat`), so that OpenAI client libraries can talk to a tenant. A model is either
//! `agent/<name>` (the agent loop, with tools, on a conversation created for the request)
//! or a catalog model (one metered model call, no tools).

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::agents::store::{self, NewMessage};
use crate::agents::{Turn, TurnEvent, meter};
use crate::error::{ApiError, ApiResult};
use crate::gateway::{Caller, Scope};
use crate::http::ApiJson;
use crate::llm::{ChatRequest, Message, Role};
use crate::state::AppState;

/// Routes of the OpenAI-compatible API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(completions))
}

/// An OpenAI chat message (text only).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct OpenAiMessage {
    /// `system`, `user` or `assistant`.
    role: String,
    /// Text.
    #[serde(default)]
    content: Option<String>,
}

/// An OpenAI chat-completions request (the fields this runtime reads; others are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionsRequest {
    /// `agent/<name>` or a catalog model.
    model: String,
    /// The conversation.
    messages: Vec<OpenAiMessage>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    stream: bool,
    /// Output cap (catalog models).
    #[serde(default)]
    max_tokens: Option<u32>,
    /// Sampling temperature (catalog models).
    #[serde(default)]
    temperature: Option<f64>,
}

/// Lists `agent/<name>` for every agent and every catalog model.
#[utoipa::path(
    get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI model list", body = Object))
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
        (status = 402, description = "Monthly budget spent", body = crate::error::ErrorBody),
        (status = 422, description = "Unknown model or no user message", body = crate::error::ErrorBody),
    )
)]
async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CompletionsRequest>,
) -> ApiResult<Response> {
    caller.require(Scope::Chat)?;
    let bundle = caller.tenant.bundle();
    let messages: Vec<Message> = body
        .messages
        .iter()
        .filter_map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => return None,
            };
            Some(Message::new(role, m.content.clone().unwrap_or_default()))
        })
        .collect();
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(ApiError::invalid(
            "messages must hold at least one user message",
        ));
    }
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
    if let Some(agent) = body.model.strip_prefix("agent/") {
        if !bundle.agents.contains_key(agent) {
            return Err(ApiError::invalid(format!("unknown model {:?}", body.model)));
        }
        let conversation = start_conversation(&state, &caller, agent, &messages).await?;
        let agent = agent.to_owned();
        if let Some(permit) = permit {
            let (tx, rx) = mpsc::unbounded_channel::<TurnEvent>();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _permit = permit;
                let result = Turn::new(state, caller, conversation, agent, Some(tx))
                    .run()
                    .await;
                let _ = done_tx.send(result.map(|r| r.usage));
            });
            return Ok(sse(id, body.model, rx, done_rx));
        }
        let result = Turn::new(state, caller, conversation, agent, None)
            .run()
            .await?;
        let content = match (&result.message, &result.approval) {
            (Some(m), _) => m.content.clone(),
            (None, Some(a)) => format!(
                "The call of {} needs a person's approval (approval {}).",
                a.tool, a.approval_id
            ),
            (None, None) => String::new(),
        };
        let usage = json!({"prompt_tokens": result.usage.input_tokens,
                           "completion_tokens": result.usage.output_tokens,
                           "total_tokens": result.usage.input_tokens + result.usage.output_tokens});
        return Ok(Json(completion_body(&id, &body.model, &content, usage)).into_response());
    }
    if !bundle.tenant.models.contains_key(&body.model) {
        return Err(ApiError::invalid(format!("unknown model {:?}", body.model)));
    }
    let request = ChatRequest {
        messages,
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        ..ChatRequest::default()
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
            let _ = done_tx.send(result.map(|c| crate::agents::TurnUsage {
                input_tokens: u64::from(c.usage.input_tokens),
                output_tokens: u64::from(c.usage.output_tokens),
                cost_micros: c.cost_micros,
                model_calls: 1,
            }));
        });
        return Ok(sse(id, body.model, rx, done_rx));
    }
    let c = metered(&state, &caller, &plan, &request, None).await?;
    let usage = json!({"prompt_tokens": c.usage.input_tokens,
                       "completion_tokens": c.usage.output_tokens,
                       "total_tokens": c.usage.total()});
    Ok(Json(completion_body(&id, &body.model, &c.content, usage)).into_response())
}

/// One metered call of a catalog model, with its usage record.
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

/// A conversation holding the request's messages, for the agent loop to answer.
async fn start_conversation(
    state: &AppState,
    caller: &Caller,
    agent: &str,
    messages: &[Message],
) -> Result<Uuid, ApiError> {
    let id = Uuid::now_v7();
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    sqlx::query(
        "insert into agentry.conversations (tenant_id, id, agent, user_id, metadata)
         values ($1, $2, $3, $4, '{\"source\": \"openai\"}')",
    )
    .bind(tenant.0)
    .bind(id)
    .bind(agent)
    .bind(caller.user_id())
    .execute(&mut *tx)
    .await?;
    // The agent brings its own system prompt; the client's system messages are not stored.
    for m in messages.iter().filter(|m| m.role != Role::System) {
        store::insert_message(
            &mut tx,
            caller,
            id,
            &NewMessage {
                role: m.role.as_str(),
                content: &m.content,
                agent: Some(agent),
                ..NewMessage::default()
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

fn completion_body(id: &str, model: &str, content: &str, usage: Value) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": usage,
    })
}

type Done = tokio::sync::oneshot::Receiver<Result<crate::agents::TurnUsage, ApiError>>;

/// OpenAI chunks: one per token event, a last one with the finish reason and usage (or an
/// error object), then `[DONE]`.
fn sse(id: String, model: String, rx: mpsc::UnboundedReceiver<TurnEvent>, done: Done) -> Response {
    let created = chrono::Utc::now().timestamp();
    let chunk = move |delta: Value, finish: Value, usage: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
               "usage": usage})
        .to_string()
    };
    let stream = futures::stream::unfold(
        (rx, Some(done), false),
        move |(mut rx, done, finished)| {
            let chunk = chunk.clone();
            async move {
                if finished {
                    return None;
                }
                while let Some(event) = rx.recv().await {
                    if let TurnEvent::Token { delta } = event {
                        let data = chunk(json!({"content": delta}), Value::Null, Value::Null);
                        return Some((
                            Ok::<_, Infallible>(Event::default().data(data)),
                            (rx, done, false),
                        ));
                    }
                }
                let Some(done) = done else {
                    return Some((Ok(Event::default().data("[DONE]")), (rx, None, true)));
                };
                let data = match done.await {
                    Ok(Ok(u)) => chunk(
                        json!({}),
                        json!("stop"),
                        json!({"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
                               "total_tokens": u.input_tokens + u.output_tokens}),
                    ),
                    Ok(Err(e)) => {
                        json!({"error": {"code": e.code, "message": e.message}}).to_string()
                    }
                    Err(_) => {
                        json!({"error": {"code": "internal", "message": "the answer was lost"}})
                            .to_string()
                    }
                };
                Some((Ok(Event::default().data(data)), (rx, None, false)))
            }
        },
    );
    Sse::new(stream).into_response()
}
