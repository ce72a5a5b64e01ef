//! The outbox relay: publishes recorded events to JetStream, exactly once by message id.
//!
//! Each round takes, per tenant, a batch of outbox rows in event id order, publishes them with
//! `Nats-Msg-Id` set to the event id, waits for every acknowledgement, then deletes the rows
//! and commits. A crash or a NATS outage anywhere in between leaves the rows in the outbox;
//! the next attempt publishes them again under the same message ids and JetStream drops the
//! copies it already stored (within the stream's duplicate window). See docs/events.md.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{
    CreateStreamError, PublishAckFuture, PublishError, PublishErrorKind,
};
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use rand::RngExt as _;
use serde_json::Value;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use super::Envelope;
use crate::bundles::TenantRegistry;
use crate::db::{Db, DbError};
use crate::metrics::{Metrics, TenantLabels};
use crate::tenancy::{TenantHandle, TenantId};

/// PostgreSQL channel `emit` notifies when an event commits.
pub const NOTIFY_CHANNEL: &str = "agentry_outbox";

/// First key of the advisory lock that gives one relay at a time a tenant's outbox, so that a
/// tenant's events leave in id order even with several replicas ("OBX1").
const LOCK_CLASS: i32 = 0x4f42_5831;

/// The next `$2` pending events of tenant `$1`, in id order, their outbox rows locked.
///
/// Each event is found by its primary key from its outbox row (a lateral lookup with a limit,
/// which the planner cannot turn into a join): a plain join of the two tables let the planner
/// merge the outbox with every event the tenant ever had, read in key order, for each batch
/// (30,000 rows read for a batch of 100 in a benchmark, growing with the audit log). Public
/// for the test that bounds the rows it reads.
pub const PENDING_BATCH: &str = "\
    select e.id, e.type, e.version, e.subject, e.actor, e.data, e.traceparent, e.created_at
    from agentry.event_outbox o
    cross join lateral (
      select e.id, e.type, e.version, e.subject, e.actor, e.data, e.traceparent, e.created_at
      from agentry.events e
      where e.tenant_id = o.tenant_id and e.id = o.event_id
      limit 1) e
    where o.tenant_id = $1
    order by o.event_id
    limit $2
    for update of o skip locked";

/// How many events of tenant `$1` wait in the outbox, and the age in seconds of the oldest:
/// read every second, so it looks up only the pending events, as [`PENDING_BATCH`] does.
pub const PENDING_GAUGES: &str = "\
    select count(*), coalesce(extract(epoch from now() - min(e.created_at)), 0)::bigint
    from agentry.event_outbox o
    cross join lateral (
      select e.created_at from agentry.events e
      where e.tenant_id = o.tenant_id and e.id = o.event_id
      limit 1) e
    where o.tenant_id = $1";

/// How the relay publishes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// JetStream stream the relay ensures and publishes into.
    pub stream: String,
    /// First subject token; subjects are `<prefix>.<tenant>.<type>`.
    pub subject_prefix: String,
    /// Duplicate window of a stream the relay creates: how long after a publish a repeat of
    /// the same event id is still recognised, hence the bound on exactly-once after a crash.
    pub duplicate_window: Duration,
    /// Age after which a stream the relay creates discards messages.
    pub max_age: Duration,
    /// Events per transaction.
    pub batch_size: u32,
    /// Look at the outbox this often even without a notification.
    pub poll_interval: Duration,
    /// Longest wait between retries of a failing tenant.
    pub max_backoff: Duration,
    /// Refresh the outbox gauges at most this often.
    pub metrics_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            stream: super::STREAM.to_owned(),
            subject_prefix: super::SUBJECT_PREFIX.to_owned(),
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(30 * 24 * 3600),
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            metrics_interval: Duration::from_secs(1),
        }
    }
}

/// Events encoded and handed to the NATS client between two yields to the scheduler.
const YIELD_EVERY: usize = 8;

/// Why a relay round failed; the rows stay in the outbox and the round is retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The stream could not be found or created.
    #[error("ensuring JetStream stream {stream}: {source}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Cause.
        #[source]
        source: CreateStreamError,
    },
    /// JetStream did not acknowledge an event.
    #[error("publishing event {id}: {source}")]
    Publish {
        /// Event id.
        id: Uuid,
        /// Cause.
        #[source]
        source: PublishError,
    },
    /// An envelope could not be encoded.
    #[error("encoding event {id}: {source}")]
    Encode {
        /// Event id.
        id: Uuid,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl RelayError {
    /// True when no stream takes the subject (deleted, or created with other subjects).
    pub fn stream_missing(&self) -> bool {
        matches!(self, Self::Publish { source, .. } if source.kind() == PublishErrorKind::StreamNotFound)
    }
}

/// An outbox row with its event.
#[derive(Debug, sqlx::FromRow)]
struct Pending {
    id: Uuid,
    #[sqlx(rename = "type")]
    type_: String,
    version: i32,
    subject: Option<String>,
    actor: Option<String>,
    data: Value,
    traceparent: Option<String>,
    created_at: DateTime<Utc>,
}

/// Retry state of a tenant (or of the stream) whose last attempt failed.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// A failed round and the events it had taken.
struct Failure {
    error: RelayError,
    ids: Vec<Uuid>,
}

/// Publishes the outbox of every served tenant to JetStream.
#[derive(Debug)]
pub struct Relay {
    db: Db,
    jetstream: jetstream::Context,
    tenants: Arc<TenantRegistry>,
    metrics: Arc<Metrics>,
    config: RelayConfig,
}

impl Relay {
    /// A relay with the default configuration (stream `AGENTRY`, subjects `agentry.>`).
    pub fn new(
        db: Db,
        jetstream: jetstream::Context,
        tenants: Arc<TenantRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            jetstream,
            tenants,
            metrics,
            config: RelayConfig::default(),
        }
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// NATS subject of an event of `event_type` for `tenant_name`.
    pub fn subject(&self, tenant_name: &str, event_type: &str) -> String {
        format!("{}.{tenant_name}.{event_type}", self.config.subject_prefix)
    }

    /// Relays until `shutdown`; retries failures forever with capped, jittered backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        // Cancelled when this future ends or is dropped, so the listener never outlives it.
        let listening = CancellationToken::new();
        let _stop_listening = listening.clone().drop_guard();
        tokio::spawn(listen(self.db.clone(), wake.clone(), listening));

        let mut stream_ready = false;
        let mut stream_backoff: Option<Backoff> = None;
        let mut backoff: HashMap<TenantId, Backoff> = HashMap::new();
        let mut metrics_due = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = Instant::now();
            let mut more = false;
            if !stream_ready && stream_backoff.is_none_or(|b| b.until <= now) {
                match self.ensure_stream().await {
                    Ok(()) => {
                        stream_ready = true;
                        stream_backoff = None;
                    }
                    Err(e) => {
                        let b = self.next_backoff(stream_backoff, now);
                        tracing::warn!(error = %e, failures = b.failures, "event relay: stream not ready; retrying");
                        stream_backoff = Some(b);
                    }
                }
            }
            if stream_ready {
                for tenant in self.tenants.all() {
                    if backoff.get(&tenant.id).is_some_and(|b| b.until > now) {
                        continue;
                    }
                    match self.relay_batch(&tenant).await {
                        Ok(count) => {
                            backoff.remove(&tenant.id);
                            more |= count >= self.config.batch_size as usize;
                        }
                        Err(failure) => {
                            let b = self.next_backoff(backoff.get(&tenant.id).copied(), now);
                            tracing::warn!(
                                tenant = %tenant.name, error = %failure.error, failures = b.failures,
                                "event relay: publishing failed; the events stay in the outbox and are retried"
                            );
                            self.count_attempt(&tenant, &failure.ids).await;
                            backoff.insert(tenant.id, b);
                            // The stream was deleted under the relay: create it again.
                            stream_ready &= !failure.error.stream_missing();
                        }
                    }
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
            }
            if Instant::now() >= metrics_due {
                self.refresh_gauges().await;
                metrics_due = Instant::now() + self.config.metrics_interval;
            }
            if more {
                continue;
            }
            let mut sleep = self.config.poll_interval;
            let soonest = backoff
                .values()
                .chain(stream_backoff.iter())
                .map(|b| b.until)
                .min();
            if let Some(until) = soonest {
                sleep = sleep.min(until.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Finds the stream, or creates it covering `<prefix>.>`. An existing stream is used as
    /// it is (operators may have tuned it); a mismatch is logged.
    pub async fn ensure_stream(&self) -> Result<(), RelayError> {
        let wanted = format!("{}.>", self.config.subject_prefix);
        let stream = self
            .jetstream
            .get_or_create_stream(stream::Config {
                name: self.config.stream.clone(),
                description: Some("Agentry events (docs/events.md)".to_owned()),
                subjects: vec![wanted.clone()],
                duplicate_window: self.config.duplicate_window,
                max_age: self.config.max_age,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|source| RelayError::Stream {
                stream: self.config.stream.clone(),
                source,
            })?;
        let existing = &stream.cached_info().config;
        if !existing.subjects.iter().any(|s| s == &wanted || s == ">") {
            tracing::warn!(
                stream = %self.config.stream, subjects = ?existing.subjects, wanted = %wanted,
                "event stream exists with other subjects; events it does not cover stay in the outbox"
            );
        }
        if existing.duplicate_window < self.config.duplicate_window {
            tracing::warn!(
                stream = %self.config.stream, window = ?existing.duplicate_window,
                "event stream has a shorter duplicate window; exactly-once after a relay crash holds only within it"
            );
        }
        Ok(())
    }

    /// Publishes one batch of `tenant`'s outbox; returns how many events left the outbox.
    async fn relay_batch(&self, tenant: &TenantHandle) -> Result<usize, Failure> {
        let mut ids = Vec::new();
        self.try_relay_batch(tenant, &mut ids)
            .await
            .map_err(|error| Failure { error, ids })
    }

    async fn try_relay_batch(
        &self,
        tenant: &TenantHandle,
        ids: &mut Vec<Uuid>,
    ) -> Result<usize, RelayError> {
        let mut tx = self.db.begin(tenant.id).await?;
        let locked: bool =
            sqlx::query_scalar("select pg_try_advisory_xact_lock($1, hashtext($2::text))")
                .bind(LOCK_CLASS)
                .bind(tenant.id.0)
                .fetch_one(&mut *tx)
                .await?;
        if !locked {
            // Another replica is relaying this tenant.
            return Ok(0);
        }
        // `skip locked` as well: a relay without the advisory lock (another version) never
        // publishes the rows this one holds.
        let rows: Vec<Pending> = sqlx::query_as(PENDING_BATCH)
            .bind(tenant.id.0)
            .bind(i64::from(self.config.batch_size))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        ids.extend(rows.iter().map(|r| r.id));

        // Send the whole batch, then await the acks: one round trip per batch, and the server
        // stores the messages in the order they were sent.
        let mut acks: Vec<(Uuid, PublishAckFuture, tracing::Span)> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                // Encoding and handing over an event never waits, so a whole batch would run
                // without letting the requests queued on this worker in (~1-2 ms for 100
                // events); they are let in every few events instead.
                tokio::task::yield_now().await;
            }
            let (subject, headers, body, span) = self.message(tenant, row)?;
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, body)
                .instrument(span.clone())
                .await
                .map_err(|source| RelayError::Publish { id: row.id, source })?;
            acks.push((row.id, ack, span));
        }
        let mut fresh = 0_u64;
        for (id, ack, span) in acks {
            let ack = ack
                .into_future()
                .instrument(span)
                .await
                .map_err(|source| RelayError::Publish { id, source })?;
            if ack.duplicate {
                // Stored by an earlier attempt whose outbox delete did not commit.
                tracing::debug!(event = %id, sequence = ack.sequence, "event already in the stream");
            } else {
                fresh += 1;
            }
        }
        sqlx::query("delete from agentry.event_outbox where tenant_id = $1 and event_id = any($2)")
            .bind(tenant.id.0)
            .bind(&*ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.metrics
            .events_published
            .get_or_create(&labels(tenant))
            .inc_by(fresh);
        Ok(rows.len())
    }

    /// Subject, headers, body and the publishing span of one event. The span is a child of
    /// the trace that made the change; its context goes into the headers for consumers.
    fn message(
        &self,
        tenant: &TenantHandle,
        row: &Pending,
    ) -> Result<(String, HeaderMap, bytes::Bytes, tracing::Span), RelayError> {
        let subject = self.subject(&tenant.name, &row.type_);
        let envelope = Envelope {
            id: row.id,
            type_: row.type_.clone(),
            version: row.version,
            tenant: tenant.name.clone(),
            subject: row.subject.clone(),
            actor: row.actor.clone(),
            time: row.created_at,
            data: row.data.clone(),
        };
        let body = serde_json::to_vec(&envelope)
            .map_err(|source| RelayError::Encode { id: row.id, source })?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, row.id.to_string());
        headers.insert("Content-Type", "application/json");
        if !crate::telemetry::exporting() {
            // No span is exported, so none is made (a span per event is a good share of the
            // relay's CPU); the stored trace context is forwarded as it is.
            if let Some(traceparent) = &row.traceparent {
                headers.insert("traceparent", traceparent.as_str());
            }
            return Ok((subject, headers, body.into(), tracing::Span::none()));
        }
        let span = tracing::info_span!(
            "event publish",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %subject,
            messaging.message.id = %row.id,
            tenant = %tenant.name,
        );
        if let Some(traceparent) = &row.traceparent {
            let carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
            // The change's trace is the parent: consumers continue it from the headers.
            let _ = span.set_parent(crate::telemetry::extract_context(&carrier));
        }
        let mut trace = span.in_scope(crate::telemetry::trace_headers);
        if !trace.contains_key("traceparent")
            && let Some(traceparent) = &row.traceparent
        {
            trace.insert("traceparent".to_owned(), traceparent.clone());
        }
        for (name, value) in trace {
            headers.insert(name, value);
        }
        Ok((subject, headers, body.into(), span))
    }

    /// Counts a failed attempt on the rows of a failed batch, in a transaction of its own
    /// (the batch's was rolled back).
    async fn count_attempt(&self, tenant: &TenantHandle, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let counted = async {
            let mut tx = self.db.begin(tenant.id).await?;
            sqlx::query(
                "update agentry.event_outbox set attempts = attempts + 1
                 where tenant_id = $1 and event_id = any($2)",
            )
            .bind(tenant.id.0)
            .bind(ids)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, RelayError>(())
        }
        .await;
        if let Err(e) = counted {
            tracing::debug!(tenant = %tenant.name, error = %e, "counting outbox attempts");
        }
    }

    /// Sets the pending count and the age of the oldest pending event of every tenant.
    async fn refresh_gauges(&self) {
        for tenant in self.tenants.all() {
            let read = async {
                let mut tx = self.db.begin(tenant.id).await?;
                let row: (i64, i64) = sqlx::query_as(PENDING_GAUGES)
                    .bind(tenant.id.0)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, RelayError>(row)
            }
            .await;
            match read {
                Ok((pending, lag)) => {
                    let labels = labels(&tenant);
                    self.metrics
                        .outbox_pending
                        .get_or_create(&labels)
                        .set(pending);
                    self.metrics
                        .outbox_lag_seconds
                        .get_or_create(&labels)
                        .set(lag.max(0));
                }
                Err(e) => {
                    tracing::debug!(tenant = %tenant.name, error = %e, "reading outbox gauges");
                }
            }
        }
    }

    /// The retry state after one more failure.
    fn next_backoff(&self, previous: Option<Backoff>, now: Instant) -> Backoff {
        let failures = previous.map_or(1, |b| b.failures.saturating_add(1));
        let delay = backoff_delay(failures, self.config.max_backoff, rand::rng().random());
        Backoff {
            failures,
            until: now + delay,
        }
    }
}

/// Delay before retry number `failures` (from 1): doubling from 100 ms up to `cap`, half of it
/// fixed and half jitter (`unit` in [0, 1)) so that replicas retrying after a shared outage
/// spread out.
pub fn backoff_delay(failures: u32, cap: Duration, unit: f64) -> Duration {
    let exp =
        Duration::from_millis(100).saturating_mul(1_u32 << failures.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    ceiling / 2 + ceiling.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

fn labels(tenant: &TenantHandle) -> TenantLabels {
    TenantLabels {
        tenant: tenant.name.clone(),
    }
}

/// Wakes the relay when `emit` notifies; reconnects after errors. A missed notification only
/// delays an event until the next poll.
async fn listen(db: Db, wake: Arc<Notify>, stop: CancellationToken) {
    let mut failures = 0_u32;
    loop {
        let Err(e) = tokio::select! {
            () = stop.cancelled() => return,
            r = listen_once(&db, &wake) => r,
        };
        failures = failures.saturating_add(1);
        tracing::debug!(error = %e, "outbox listener; polling until it reconnects");
        let delay = backoff_delay(failures, Duration::from_secs(5), 0.5);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn listen_once(db: &Db, wake: &Notify) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(db.pool()).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    loop {
        listener.recv().await?;
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(5);
        assert_eq!(backoff_delay(1, cap, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(1, cap, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(3, cap, 0.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(30, cap, 0.0), Duration::from_millis(2500));
        assert_eq!(backoff_delay(30, cap, 1.0), cap);
        assert_eq!(backoff_delay(u32::MAX, cap, 5.0), cap);
    }

    #[test]
    fn subjects_are_prefix_tenant_type() {
        assert_eq!(
            super::super::subject("acme", "apikey.created"),
            "agentry.acme.apikey.created"
        );
    }
}
