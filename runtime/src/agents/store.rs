//! What a turn persists: messages (with their `message.created` events), usage rows (with
//! `usage.recorded`), handoffs, escalations and pending approvals. Every write is one
//! RLS-scoped transaction of the caller's tenant.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::events::{self, EventRow, NewEvent};
use crate::gateway::Caller;
use crate::llm::{Completion, Message, Role, ToolCall};
use crate::state::AppState;
use crate::tenancy::TenantId;

/// A stored message as the API shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    /// Message id.
    pub id: Uuid,
    /// `user`, `assistant` or `tool`.
    pub role: String,
    /// Text.
    pub content: String,
    /// Agent that wrote it (assistant) or was serving (user, tool).
    pub agent: Option<String>,
    /// Tool calls of an assistant message.
    #[schema(value_type = Option<Object>)]
    pub tool_calls: Option<Value>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
    /// Catalog model that answered.
    pub model: Option<String>,
    /// Input tokens of the model call.
    pub tokens_in: i32,
    /// Output tokens of the model call.
    pub tokens_out: i32,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// Model latency in milliseconds.
    pub latency_ms: Option<i32>,
    /// Creation time.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl StoredMessage {
    /// The message as the model sees it.
    pub fn to_llm(&self) -> Message {
        let role = match self.role.as_str() {
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "system" => Role::System,
            _ => Role::User,
        };
        let tool_calls: Vec<ToolCall> = self
            .tool_calls
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        Message {
            role,
            content: self.content.clone(),
            tool_calls,
            tool_call_id: self.tool_call_id.clone(),
        }
    }
}

/// A message to store.
#[derive(Debug, Default)]
pub struct NewMessage<'a> {
    /// Role.
    pub role: &'a str,
    /// Text.
    pub content: &'a str,
    /// Agent.
    pub agent: Option<&'a str>,
    /// Tool calls (assistant).
    pub tool_calls: Option<&'a [ToolCall]>,
    /// Answered call (tool).
    pub tool_call_id: Option<&'a str>,
    /// The completion that produced it (assistant).
    pub completion: Option<&'a Completion>,
    /// Model latency.
    pub latency_ms: Option<i32>,
}

/// Columns of [`StoredMessage`], as a literal for `concat!`.
macro_rules! message_columns {
    () => {
        "id, role, content, agent, tool_calls, tool_call_id, model, tokens_in, tokens_out, \
         cost_micros, latency_ms, created_at"
    };
}

const MESSAGE_COLUMNS: &str = message_columns!();

/// A message, the touch of its conversation, the usage row of its completion (when `$14`, the
/// usage id, is not null) and their events, in one statement: a turn's write is one round
/// trip. `clock_timestamp()`, not `now()`: several messages of one transaction must still
/// order.
const INSERT_MESSAGE: &str = concat!(
    "with message as (
       insert into agentry.messages (tenant_id, id, conversation_id, role, content, agent,
         tool_calls, tool_call_id, model, tokens_in, tokens_out, cost_micros, latency_ms,
         created_at)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, clock_timestamp())
       returning ",
    message_columns!(),
    "),
     touched as (
       update agentry.conversations set updated_at = now() where tenant_id = $1 and id = $3),
     usage as (
       insert into agentry.usage_records
         (tenant_id, id, key_id, user_id, source, model, tokens_in, tokens_out, cost_micros)
       select $1, $14, $15, $16, 'chat', $9, $10, $11, $12 where $14::uuid is not null),
     ",
    crate::events::outbox_ctes!("$1", "$17"),
    " select message.*, ",
    crate::events::notify_outbox!(),
    " as notified from message"
);

/// A usage row and its event, in one statement.
const INSERT_USAGE: &str = concat!(
    "with usage as (
       insert into agentry.usage_records
         (tenant_id, id, key_id, user_id, source, model, tokens_in, tokens_out, cost_micros)
       values ($1, $2, $3, $4, 'chat', $5, $6, $7, $8)),
     ",
    crate::events::outbox_ctes!("$1", "$9"),
    " select ",
    crate::events::notify_outbox!()
);

/// Tokens as the tables store them (an `integer`; no call comes near its limit).
fn tokens(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The `message.created` event of message `id`.
fn message_event(
    caller: &Caller,
    conversation: Uuid,
    id: Uuid,
    role: &str,
    agent: Option<&str>,
) -> NewEvent {
    NewEvent::new(
        "message.created",
        json!({"conversationId": conversation, "messageId": id, "role": role, "agent": agent}),
    )
    .subject(conversation.to_string())
    .actor(caller.actor())
}

/// The `usage.recorded` event of the usage row `id`.
fn usage_event(caller: &Caller, id: Uuid, conversation: Option<Uuid>, c: &Completion) -> NewEvent {
    NewEvent::new(
        "usage.recorded",
        json!({
            "id": id, "source": "chat", "conversationId": conversation, "model": c.model,
            "provider": c.provider, "inputTokens": c.usage.input_tokens,
            "outputTokens": c.usage.output_tokens, "estimated": c.usage_estimated,
            "costMicros": c.cost_micros,
        }),
    )
    .subject(conversation.map_or_else(|| id.to_string(), |c| c.to_string()))
    .actor(caller.actor())
}

/// Inserts a message and its `message.created` event; with a completion also its usage row
/// and `usage.recorded` event. One statement: atomic on its own, so it needs no transaction
/// (see [`crate::db::Db::statement`]).
pub async fn insert_message(
    conn: &mut PgConnection,
    caller: &Caller,
    conversation: Uuid,
    m: &NewMessage<'_>,
) -> Result<StoredMessage, sqlx::Error> {
    let id = Uuid::now_v7();
    let tool_calls = m
        .tool_calls
        .filter(|c| !c.is_empty())
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null));
    let c = m.completion;
    let traceparent = crate::telemetry::current_traceparent();
    let mut events = vec![EventRow::new(
        message_event(caller, conversation, id, m.role, m.agent),
        traceparent.clone(),
    )];
    let usage_id = c.map(|c| {
        let usage_id = Uuid::now_v7();
        events.push(EventRow::new(
            usage_event(caller, usage_id, Some(conversation), c),
            traceparent,
        ));
        usage_id
    });
    sqlx::query_as(INSERT_MESSAGE)
        .bind(caller.tenant.id.0)
        .bind(id)
        .bind(conversation)
        .bind(m.role)
        .bind(m.content)
        .bind(m.agent)
        .bind(&tool_calls)
        .bind(m.tool_call_id)
        .bind(c.map(|c| c.model.as_str()))
        .bind(c.map_or(0, |c| tokens(c.usage.input_tokens)))
        .bind(c.map_or(0, |c| tokens(c.usage.output_tokens)))
        .bind(c.map_or(0, |c| c.cost_micros))
        .bind(m.latency_ms)
        .bind(usage_id)
        .bind(caller.key_id())
        .bind(caller.user_id())
        .bind(Json(&events))
        .fetch_one(&mut *conn)
        .await
}

/// Inserts the usage row of one model call and its `usage.recorded` event.
pub async fn record_usage(
    conn: &mut PgConnection,
    caller: &Caller,
    conversation: Option<Uuid>,
    c: &Completion,
) -> Result<(), sqlx::Error> {
    let id = Uuid::now_v7();
    let event = EventRow::new(
        usage_event(caller, id, conversation, c),
        crate::telemetry::current_traceparent(),
    );
    sqlx::query(INSERT_USAGE)
        .bind(caller.tenant.id.0)
        .bind(id)
        .bind(caller.key_id())
        .bind(caller.user_id())
        .bind(&c.model)
        .bind(tokens(c.usage.input_tokens))
        .bind(tokens(c.usage.output_tokens))
        .bind(c.cost_micros)
        .bind(Json([event]))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A conversation row.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    /// Id.
    pub id: Uuid,
    /// Agent serving it now.
    pub agent: Option<String>,
    /// Workflow answering it (a tenant whose chat starts with a workflow), when no agent does.
    pub workflow: Option<String>,
    /// End user who owns it (none for API-key callers).
    pub user_id: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// `open` or `escalated`.
    pub status: String,
    /// Handed to a person.
    pub escalated: bool,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Creation time.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Columns of [`Conversation`], as a literal for `concat!`.
macro_rules! conversation_columns {
    () => {
        "id, agent, workflow, user_id, title, status, escalated, metadata, created_at, updated_at"
    };
}

/// Columns of [`Conversation`].
pub const CONVERSATION_COLUMNS: &str = conversation_columns!();

/// A conversation, its opening messages (`$9`, a JSON array of [`OpeningRow`]s) and their
/// events (`$8`: `conversation.created` when asked for, `message.created` for each message),
/// in one statement. The ids are UUIDv7s made in the messages' order: sorted by id, the
/// messages take `clock_timestamp()` in that order (PostgreSQL evaluates volatile output
/// after the sort), and the id breaks ties of equal timestamps the same way.
const INSERT_CONVERSATION: &str = concat!(
    "with conversation as (
       insert into agentry.conversations (tenant_id, id, agent, user_id, title, metadata, workflow)
       values ($1, $2, $3, $4, $5, $6, $7)
       returning ",
    conversation_columns!(),
    "),
     opening as (
       insert into agentry.messages (tenant_id, id, conversation_id, role, content, agent,
         created_at)
       select $1, m.id, $2, m.role, m.content, m.agent, clock_timestamp()
         from jsonb_to_recordset($9) as m(id uuid, role text, content text, agent text)
        order by m.id),
     ",
    crate::events::outbox_ctes!("$1", "$8"),
    " select conversation.*, ",
    crate::events::notify_outbox!(),
    " as notified from conversation"
);

/// A message a conversation starts with: text from the caller or the request, without tool
/// calls or a model call of its own.
#[derive(Debug, Clone, Copy)]
pub struct OpeningMessage<'a> {
    /// `user` or `assistant`.
    pub role: &'a str,
    /// Text.
    pub content: &'a str,
    /// The agent serving the conversation.
    pub agent: Option<&'a str>,
}

/// An [`OpeningMessage`] as an element of the statement's JSON array.
#[derive(Serialize)]
struct OpeningRow<'a> {
    id: Uuid,
    role: &'a str,
    content: &'a str,
    agent: Option<&'a str>,
}

/// A conversation to create.
#[derive(Debug, Default)]
pub struct NewConversation<'a> {
    /// Agent serving it.
    pub agent: Option<&'a str>,
    /// Workflow answering it, when no agent does.
    pub workflow: Option<&'a str>,
    /// Title.
    pub title: Option<&'a str>,
    /// Free-form metadata (a JSON object; `{}` when `None`).
    pub metadata: Option<&'a Value>,
    /// Fields of its `conversation.created` event besides `conversationId`, `agent` and
    /// `userId`; `None` records no event.
    pub event: Option<Value>,
    /// Messages it starts with, stored in order.
    pub messages: &'a [OpeningMessage<'a>],
}

/// Inserts a conversation owned by `caller` (its end user, if any), its
/// `conversation.created` event when `new.event` is set, and its opening messages with their
/// `message.created` events. One statement: atomic on its own, so it needs no transaction
/// (see [`crate::db::Db::statement`]).
pub async fn create_conversation(
    conn: &mut PgConnection,
    caller: &Caller,
    new: &NewConversation<'_>,
) -> Result<Conversation, sqlx::Error> {
    let id = Uuid::now_v7();
    let empty = json!({});
    let traceparent = crate::telemetry::current_traceparent();
    let mut events: Vec<EventRow> = Vec::with_capacity(new.messages.len() + 1);
    if let Some(fields) = &new.event {
        let mut payload = json!({"conversationId": id, "agent": new.agent,
                                 "userId": caller.user_id()});
        if let (Some(payload), Some(fields)) = (payload.as_object_mut(), fields.as_object()) {
            payload.extend(fields.clone());
        }
        events.push(EventRow::new(
            NewEvent::new("conversation.created", payload)
                .subject(id.to_string())
                .actor(caller.actor()),
            traceparent.clone(),
        ));
    }
    let opening: Vec<OpeningRow<'_>> = new
        .messages
        .iter()
        .map(|m| {
            let row = OpeningRow {
                id: Uuid::now_v7(),
                role: m.role,
                content: m.content,
                agent: m.agent,
            };
            events.push(EventRow::new(
                message_event(caller, id, row.id, m.role, m.agent),
                traceparent.clone(),
            ));
            row
        })
        .collect();
    sqlx::query_as(INSERT_CONVERSATION)
        .bind(caller.tenant.id.0)
        .bind(id)
        .bind(new.agent)
        .bind(caller.user_id())
        .bind(new.title)
        .bind(new.metadata.unwrap_or(&empty))
        .bind(new.workflow)
        .bind(Json(&events))
        .bind(Json(&opening))
        .fetch_one(&mut *conn)
        .await
}

/// The conversation `id` when `caller` may see it: its tenant's (RLS) and, for an end user,
/// their own.
pub async fn conversation(
    conn: &mut PgConnection,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<Conversation>, sqlx::Error> {
    let row: Option<Conversation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {CONVERSATION_COLUMNS} from agentry.conversations where tenant_id = $1 and id = $2"
    )))
    .bind(caller.tenant.id.0)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.filter(|c| match caller.user_id() {
        Some(user) => c.user_id.as_deref() == Some(user),
        None => true,
    }))
}

/// Every message of a conversation, oldest first.
pub async fn messages(
    conn: &mut PgConnection,
    tenant: TenantId,
    conversation: Uuid,
) -> Result<Vec<StoredMessage>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {MESSAGE_COLUMNS} from agentry.messages
         where tenant_id = $1 and conversation_id = $2 order by created_at, id"
    )))
    .bind(tenant.0)
    .bind(conversation)
    .fetch_all(&mut *conn)
    .await
}

/// The last `window` messages, oldest first, without a leading tool result whose call fell
/// out of the window (providers refuse a tool message that answers no visible call).
pub async fn window(
    state: &AppState,
    tenant: TenantId,
    conversation: Uuid,
    window: u32,
) -> Result<Vec<StoredMessage>, ApiError> {
    let mut statement = state.db.statement(tenant).await?;
    let mut rows: Vec<StoredMessage> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {MESSAGE_COLUMNS} from agentry.messages
         where tenant_id = $1 and conversation_id = $2 order by created_at desc, id desc limit $3"
    )))
    .bind(tenant.0)
    .bind(conversation)
    .bind(i64::from(window.max(1)))
    .fetch_all(statement.conn())
    .await?;
    statement.finish().await?;
    rows.reverse();
    let skip = rows.iter().take_while(|m| m.role == "tool").count();
    rows.drain(..skip);
    Ok(rows)
}

/// Refuses a new user message while a tool call of the conversation waits for approval (409
/// naming it): the assistant message that made the call has no result for it yet, and
/// OpenAI-compatible providers refuse a history with an unanswered tool call. One pending
/// approval at most exists per conversation (a turn stops at its first).
pub async fn ensure_no_pending_approval(
    conn: &mut PgConnection,
    tenant: TenantId,
    conversation: Uuid,
) -> Result<(), ApiError> {
    let pending: Option<(Uuid, String)> = sqlx::query_as(
        "select id, tool from agentry.tool_approvals
         where tenant_id = $1 and conversation_id = $2 and status = 'pending' limit 1",
    )
    .bind(tenant.0)
    .bind(conversation)
    .fetch_optional(&mut *conn)
    .await?;
    match pending {
        None => Ok(()),
        Some((id, tool)) => Err(ApiError::conflict(format!(
            "a call of {tool} waits for approval {id}; decide it with POST /api/v1/chat/approvals/{id} first"
        ))),
    }
}

/// An approval claimed for a decision.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingApproval {
    /// Id.
    pub id: Uuid,
    /// Conversation.
    pub conversation_id: Uuid,
    /// The call waiting.
    pub tool_call_id: String,
    /// Tool.
    pub tool: String,
    /// Arguments.
    pub arguments: Value,
    /// Agent that asked.
    pub agent: String,
}

/// Decides a pending approval, once: `None` when it does not exist for this caller or was
/// already decided. The decision commits before the call runs, so two racing decisions never
/// both run it.
pub async fn decide_approval(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    approve: bool,
    comment: Option<&str>,
) -> Result<Option<PendingApproval>, ApiError> {
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    let row: Option<PendingApproval> = sqlx::query_as(
        "update agentry.tool_approvals set status = $3, comment = $4, decided_by = $5,
           decided_at = now()
         where tenant_id = $1 and id = $2 and status = 'pending'
         returning id, conversation_id, tool_call_id, tool, arguments, agent",
    )
    .bind(tenant.0)
    .bind(id)
    .bind(if approve { "approved" } else { "denied" })
    .bind(comment)
    .bind(caller.actor())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if conversation(&mut tx, caller, row.conversation_id)
        .await?
        .is_none()
    {
        // Another end user's conversation: roll back, as if it did not exist.
        return Ok(None);
    }
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(
            "tool.approval_decided",
            json!({"approvalId": id, "conversationId": row.conversation_id, "tool": row.tool,
                   "approved": approve, "comment": comment}),
        )
        .subject(row.conversation_id.to_string())
        .actor(caller.actor()),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}
