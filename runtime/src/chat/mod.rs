//! The chat API (`/api/v1/chat/...`, scope `chat`): conversations, messages answered by the
//! agent loop (JSON, or server-sent events with `Accept: text/event-stream`), feedback and
//! tool-call approvals. See docs/chat.md.

pub mod openai;
mod sse;
mod workflow;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::agents::store::{
    self, CONVERSATION_COLUMNS, Conversation, NewConversation, NewMessage, StoredMessage,
};
use crate::agents::{Turn, TurnResult};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, NewEvent};
use crate::gateway::{Caller, Scope};
use crate::http::ApiJson;
use crate::state::AppState;

/// Longest message, in bytes.
const MAX_CONTENT_BYTES: usize = 32 * 1024;

/// Routes of the chat API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(get_conversation))
        .routes(routes!(post_message))
        .routes(routes!(feedback))
        .routes(routes!(decide_approval))
}

/// A conversation to start.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateConversation {
    /// Agent to talk to; the tenant's default agent when omitted.
    agent: Option<String>,
    /// Title.
    title: Option<String>,
    /// Free-form metadata (a JSON object).
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// The caller's conversations, most recently active first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationList {
    /// Up to 100 conversations.
    conversations: Vec<Conversation>,
}

/// A conversation with its messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationDetail {
    /// The conversation.
    #[serde(flatten)]
    conversation: Conversation,
    /// Messages, oldest first.
    messages: Vec<StoredMessage>,
}

/// A user message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// Text (1 byte to 32 KiB).
    content: String,
}

/// Feedback on an answer.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// `up` or `down`.
    rating: String,
    /// Why.
    comment: Option<String>,
}

/// A decision on a pending tool call.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Run the call (`true`) or refuse it.
    approve: bool,
    /// Why.
    comment: Option<String>,
}

/// Starts a conversation.
#[utoipa::path(
    post, path = "/api/v1/chat/conversations", tag = "chat", security(("bearer" = [])),
    request_body = CreateConversation,
    responses(
        (status = 201, description = "The conversation", body = Conversation),
        (status = 403, description = "Missing the chat scope", body = crate::error::ErrorBody),
        (status = 422, description = "Unknown agent, or no agent and no default", body = crate::error::ErrorBody),
    )
)]
async fn create_conversation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    caller.require(Scope::Chat)?;
    let bundle = caller.tenant.bundle();
    // An explicit agent, else the tenant's default agent, else its default workflow.
    let (agent, workflow) = match (
        body.agent,
        &bundle.tenant.default_agent,
        &bundle.tenant.default_workflow,
    ) {
        (Some(agent), _, _) => (Some(agent), None),
        (None, Some(agent), _) => (Some(agent.clone()), None),
        (None, None, Some(workflow)) => (None, Some(workflow.clone())),
        (None, None, None) => {
            return Err(ApiError::invalid(
                "no agent given and the tenant has no default agent or workflow",
            ));
        }
    };
    if let Some(agent) = &agent
        && !bundle.agents.contains_key(agent)
    {
        return Err(ApiError::invalid(format!("unknown agent {agent:?}")));
    }
    if let Some(workflow) = &workflow
        && !bundle.workflows.contains_key(workflow)
    {
        return Err(ApiError::invalid(format!(
            "the tenant's default workflow {workflow:?} is not runnable"
        )));
    }
    let metadata = body.metadata.unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        return Err(ApiError::invalid("metadata must be a JSON object"));
    }
    let mut statement = state.db.statement(caller.tenant.id).await?;
    let conversation = store::create_conversation(
        statement.conn(),
        &caller,
        &NewConversation {
            agent: agent.as_deref(),
            workflow: workflow.as_deref(),
            title: body.title.as_deref(),
            metadata: Some(&metadata),
            event: Some(json!({"workflow": workflow})),
            messages: &[],
        },
    )
    .await?;
    statement.finish().await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

/// Lists conversations: the tenant's for an API key, an end user's own for a user token.
#[utoipa::path(
    get, path = "/api/v1/chat/conversations", tag = "chat", security(("bearer" = [])),
    responses(
        (status = 200, description = "Conversations", body = ConversationList),
        (status = 403, description = "Missing the chat scope", body = crate::error::ErrorBody),
    )
)]
async fn list_conversations(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<ConversationList>> {
    caller.require(Scope::Chat)?;
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    let conversations: Vec<Conversation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {CONVERSATION_COLUMNS} from agentry.conversations
         where tenant_id = $1 and ($2::text is null or user_id = $2)
         order by updated_at desc, id desc limit 100"
    )))
    .bind(tenant.0)
    .bind(caller.user_id())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(ConversationList { conversations }))
}

/// A conversation with its messages.
#[utoipa::path(
    get, path = "/api/v1/chat/conversations/{id}", tag = "chat", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation", body = ConversationDetail),
        (status = 404, description = "No such conversation for this caller", body = crate::error::ErrorBody),
    )
)]
async fn get_conversation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ConversationDetail>> {
    caller.require(Scope::Chat)?;
    let mut tx = state.db.begin(caller.tenant.id).await?;
    let conversation = store::conversation(&mut tx, &caller, id)
        .await?
        .ok_or_else(no_conversation)?;
    let messages = store::messages(&mut tx, caller.tenant.id, id).await?;
    tx.commit().await?;
    Ok(Json(ConversationDetail {
        conversation,
        messages,
    }))
}

fn no_conversation() -> ApiError {
    ApiError::not_found("no such conversation")
}

/// Sends a user message and answers it with the agent loop: JSON by default, server-sent
/// events (`token`, `tool_call`, `tool_result`, `handoff`, `approval_required`, `done`,
/// `error`) with `Accept: text/event-stream`.
#[utoipa::path(
    post, path = "/api/v1/chat/conversations/{id}/messages", tag = "chat", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = PostMessage,
    responses(
        (status = 200, description = "The turn's result (or an SSE stream)", body = TurnResult),
        (status = 402, description = "Monthly budget spent", body = crate::error::ErrorBody),
        (status = 404, description = "No such conversation for this caller", body = crate::error::ErrorBody),
        (status = 409, description = "Escalated to a person", body = crate::error::ErrorBody),
        (status = 429, description = "Token rate or stream cap reached", body = crate::error::ErrorBody),
        (status = 502, description = "Every model failed", body = crate::error::ErrorBody),
    )
)]
async fn post_message(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PostMessage>,
) -> ApiResult<Response> {
    caller.require(Scope::Chat)?;
    if body.content.trim().is_empty() || body.content.len() > MAX_CONTENT_BYTES {
        return Err(ApiError::invalid(
            "content must be 1 byte to 32 KiB of text",
        ));
    }
    let streaming = wants_sse(&headers);
    let permit = if streaming {
        match state.limiter.acquire_stream(&caller.tenant) {
            Ok(p) => Some(p),
            Err(e) => {
                state.metrics.rejected(&caller.tenant.name, e.limit);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let mut tx = state.db.begin(caller.tenant.id).await?;
    let conversation = store::conversation(&mut tx, &caller, id)
        .await?
        .ok_or_else(no_conversation)?;
    if conversation.escalated {
        return Err(ApiError::conflict(
            "this conversation was handed to a person; the agent no longer answers it",
        ));
    }
    store::ensure_no_pending_approval(&mut tx, caller.tenant.id, id).await?;
    if let (None, Some(workflow)) = (&conversation.agent, &conversation.workflow) {
        store::insert_message(
            &mut tx,
            &caller,
            id,
            &NewMessage {
                role: "user",
                content: &body.content,
                ..NewMessage::default()
            },
        )
        .await?;
        tx.commit().await?;
        let answer = workflow::answer(&state, &caller, id, workflow, &body.content).await?;
        return Ok(workflow::respond(answer, streaming));
    }
    let agent = conversation
        .agent
        .clone()
        .or_else(|| caller.tenant.bundle().tenant.default_agent.clone())
        .ok_or_else(|| ApiError::invalid("the conversation has no agent"))?;
    store::insert_message(
        &mut tx,
        &caller,
        id,
        &NewMessage {
            role: "user",
            content: &body.content,
            agent: Some(&agent),
            ..NewMessage::default()
        },
    )
    .await?;
    tx.commit().await?;
    match permit {
        Some(permit) => Ok(sse::respond(state, caller, id, agent, permit)),
        None => {
            // Boxed: an agent's turn is a large future, and this one would be moved by value.
            let result = Box::pin(Turn::new(state, caller, id, agent, None).run()).await?;
            Ok(Json(result).into_response())
        }
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Rates an answer; recorded as a `message.feedback` event.
#[utoipa::path(
    post, path = "/api/v1/chat/conversations/{id}/messages/{message_id}/feedback", tag = "chat",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id"), ("message_id" = Uuid, Path, description = "Message id")),
    request_body = Feedback,
    responses(
        (status = 204, description = "Recorded"),
        (status = 404, description = "No such message for this caller", body = crate::error::ErrorBody),
        (status = 422, description = "Rating is not up or down", body = crate::error::ErrorBody),
    )
)]
async fn feedback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, message_id)): Path<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<Feedback>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Chat)?;
    if body.rating != "up" && body.rating != "down" {
        return Err(ApiError::invalid("rating must be \"up\" or \"down\""));
    }
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    store::conversation(&mut tx, &caller, id)
        .await?
        .ok_or_else(no_conversation)?;
    let exists: Option<Uuid> = sqlx::query_scalar(
        "select id from agentry.messages where tenant_id = $1 and conversation_id = $2 and id = $3",
    )
    .bind(tenant.0)
    .bind(id)
    .bind(message_id)
    .fetch_optional(&mut *tx)
    .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("no such message"));
    }
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(
            "message.feedback",
            json!({"conversationId": id, "messageId": message_id, "rating": body.rating,
                   "comment": body.comment}),
        )
        .subject(id.to_string())
        .actor(caller.actor()),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Approves or denies a pending tool call, then continues the turn and answers its result.
#[utoipa::path(
    post, path = "/api/v1/chat/approvals/{id}", tag = "chat", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Approval id")),
    request_body = Decision,
    responses(
        (status = 200, description = "The continued turn's result", body = TurnResult),
        (status = 404, description = "No pending approval with this id", body = crate::error::ErrorBody),
    )
)]
async fn decide_approval(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<Decision>,
) -> ApiResult<Json<TurnResult>> {
    caller.require(Scope::Chat)?;
    let approval =
        store::decide_approval(&state, &caller, id, body.approve, body.comment.as_deref())
            .await?
            .ok_or_else(|| ApiError::not_found("no pending approval with this id"))?;
    let (conversation, agent) = (approval.conversation_id, approval.agent.clone());
    let result = Box::pin(Turn::new(state, caller, conversation, agent, None).resume(
        approval,
        body.approve,
        body.comment,
    ))
    .await?;
    Ok(Json(result))
}
