//! Events: written in the same transaction as the change they describe (transactional
//! outbox), published to JetStream by the relay, and kept as the tenant's audit log.
//! Types and payloads are documented in docs/events.md.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::tenancy::TenantId;

pub mod audit;
pub mod relay;

pub use relay::{Relay, RelayConfig};

/// JetStream stream that holds every tenant's events.
pub const STREAM: &str = "AGENTRY";

/// First token of every event subject.
pub const SUBJECT_PREFIX: &str = "agentry";

/// NATS subject of an event: `agentry.<tenant>.<type>`.
pub fn subject(tenant_name: &str, event_type: &str) -> String {
    format!("{SUBJECT_PREFIX}.{tenant_name}.{event_type}")
}

/// An event as published on NATS and listed by the audit API (docs/events.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    /// Event id, a UUIDv7 (sorts by creation); also the `Nats-Msg-Id` header.
    pub id: Uuid,
    /// Dotted event type, such as `apikey.created`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Payload version of the type.
    pub version: i32,
    /// Tenant name.
    pub tenant: String,
    /// What the event is about (an id), when it is about one thing.
    pub subject: Option<String>,
    /// Who caused it: `key:<id>`, `user:<sub>` or `system`.
    pub actor: Option<String>,
    /// When the change was made (the start of its transaction).
    pub time: DateTime<Utc>,
    /// Type-specific payload.
    pub data: Value,
}

/// The trace context a consumer continues: pass the headers of a received NATS message and
/// use the result as the parent of the consumer's span.
pub fn trace_context(headers: Option<&async_nats::HeaderMap>) -> opentelemetry::Context {
    let carrier: HashMap<String, String> = headers
        .map(|h| {
            h.iter()
                .filter_map(|(name, values)| {
                    let name = name.to_string().to_ascii_lowercase();
                    let value = values.first()?;
                    Some((name, value.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    crate::telemetry::extract_context(&carrier)
}

/// An event to record.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    /// Dotted type, such as `apikey.created` (see docs/events.md).
    pub type_: &'static str,
    /// Payload version of this type.
    pub version: i32,
    /// What the event is about (an id), for filtering.
    pub subject: Option<String>,
    /// Who caused it (`key:<id>`, `user:<sub>`, `system`).
    pub actor: Option<String>,
    /// Payload.
    pub data: Value,
}

impl NewEvent {
    /// An event of `type_` (version 1) with `data`.
    pub fn new(type_: &'static str, data: Value) -> Self {
        Self {
            type_,
            version: 1,
            subject: None,
            actor: None,
            data,
        }
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
}

/// An event as an element of a JSON array parameter, for a statement that writes its events
/// with the change they describe, in one round trip (see [`outbox_ctes`]).
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// Event id, a UUIDv7.
    pub id: Uuid,
    /// Dotted type.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// Payload version of the type.
    pub version: i32,
    /// What it is about.
    pub subject: Option<String>,
    /// Who caused it.
    pub actor: Option<String>,
    /// Payload.
    pub data: Value,
    /// The W3C trace context the relay forwards.
    pub traceparent: Option<String>,
}

impl EventRow {
    /// `event` with a new id and the given trace context (read it once per statement with
    /// [`crate::telemetry::current_traceparent`]).
    pub fn new(event: NewEvent, traceparent: Option<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            type_: event.type_,
            version: event.version,
            subject: event.subject,
            actor: event.actor,
            data: event.data,
            traceparent,
        }
    }
}

/// Common table expressions `written_event` and `written_outbox` that record the events of
/// a JSON array of [`EventRow`]s for a tenant: audit rows and outbox entries. Arguments: the
/// placeholders of the tenant id and of the array, such as `"$1"` and `"$9"`. Follow with
/// [`notify_outbox`] in the statement's final `select` to wake the relay on commit.
macro_rules! outbox_ctes {
    ($tenant:literal, $rows:literal) => {
        concat!(
            "written_event as (
               insert into agentry.events
                 (tenant_id, id, type, version, subject, actor, data, traceparent)
               select ",
            $tenant,
            ", e.id, e.type, e.version, e.subject, e.actor, e.data,
                      e.traceparent
                 from jsonb_to_recordset(",
            $rows,
            ") as e(id uuid, type text, version integer,
                      subject text, actor text, data jsonb, traceparent text)
               returning tenant_id, id),
             written_outbox as (
               insert into agentry.event_outbox (tenant_id, event_id)
               select tenant_id, id from written_event
               returning event_id)"
        )
    };
}
pub(crate) use outbox_ctes;

/// A scalar expression for the final `select` of a statement with [`outbox_ctes`]: one
/// notification to the relay when it wrote any event (sent on commit, dropped on rollback).
/// A `select` common table expression runs only where it is read, so it must be read.
macro_rules! notify_outbox {
    () => {
        "(select count(*) from (select pg_notify('agentry_outbox', '')
                                  from written_outbox limit 1) as notified)"
    };
}
pub(crate) use notify_outbox;

/// Records `event` for `tenant` in the caller's transaction: the audit row and its outbox
/// entry commit or roll back with the change itself, and the relay is woken when it commits.
/// Returns the event id (a UUIDv7).
pub async fn emit(
    conn: &mut PgConnection,
    tenant: TenantId,
    event: NewEvent,
) -> Result<Uuid, sqlx::Error> {
    // The notification rides in the same statement: one round trip per event, not two.
    insert(conn, tenant, event, INSERT_AND_NOTIFY).await
}

/// Like [`emit`], without waking the relay: the event is published at the relay's next poll
/// (`RelayConfig::poll_interval`, 500 ms by default). For high-rate events whose transaction
/// should not pay for a notification: PostgreSQL serialises the commits of all notifying
/// transactions, so a notification per workflow step would cap checkpoints server-wide.
pub async fn emit_unsignalled(
    conn: &mut PgConnection,
    tenant: TenantId,
    event: NewEvent,
) -> Result<Uuid, sqlx::Error> {
    insert(conn, tenant, event, INSERT).await
}

/// The audit row and its outbox entry, in one statement.
const INSERT: &str = concat!(
    "with ",
    outbox_ctes!("$1", "$2"),
    " select count(*) from written_outbox"
);

/// [`INSERT`], and a notification to the relay (sent by PostgreSQL when the transaction
/// commits, dropped if it rolls back).
const INSERT_AND_NOTIFY: &str = concat!(
    "with ",
    outbox_ctes!("$1", "$2"),
    " select ",
    notify_outbox!()
);

async fn insert(
    conn: &mut PgConnection,
    tenant: TenantId,
    event: NewEvent,
    statement: &'static str,
) -> Result<Uuid, sqlx::Error> {
    let row = EventRow::new(event, crate::telemetry::current_traceparent());
    let id = row.id;
    sqlx::query(statement)
        .bind(tenant.0)
        .bind(sqlx::types::Json([row]))
        .execute(&mut *conn)
        .await?;
    Ok(id)
}
