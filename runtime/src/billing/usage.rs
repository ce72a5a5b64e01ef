//! Usage records written in batches, off the request path.
//!
//! A model call that is not part of a conversation (`POST /v1/chat/completions` on a catalog
//! model) hands its usage record to [`UsageWriter::record`] before its answer is sent. A
//! background task groups the records by tenant and writes each group (the `usage_records`
//! rows, their `usage.recorded` events and outbox entries) in one transaction, at most
//! [`UsageConfig::flush_interval`] after the first record of a batch arrived, or sooner when
//! [`UsageConfig::max_batch`] records are waiting; up to [`UsageConfig::writes_in_flight`]
//! batches are written at once.
//!
//! Guarantees (docs/limits.md): a record handed over is written unless the process dies, and
//! then what is lost is the records in memory: those of the last flush interval (plus the
//! writes in flight) while the database keeps up, up to the whole queue when it does not. When
//! the queue is full, `record` waits for room (backpressure) rather than drop. When a write
//! fails the batch is retried, holding the queue, so requests slow down instead of losing
//! records. On shutdown [`UsageWriter::close`] writes whatever is queued; a record handed over
//! after that is written directly. How long each batched record waited is observed in
//! `agentry_usage_write_delay_seconds`: the window a crash would have lost it in; records that
//! waited for room in a full queue are counted in `agentry_usage_queue_full_total`: the
//! requests the database's pace slowed down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::gateway::Caller;
use crate::llm::Completion;
use crate::metrics::Metrics;
use crate::tenancy::TenantId;

/// Tuning of the usage writer.
#[derive(Debug, Clone, Copy)]
pub struct UsageConfig {
    /// Longest a record waits in memory before its batch is started, while the database keeps
    /// up (a record waits longer behind a full queue).
    pub flush_interval: Duration,
    /// Most records written in one batch.
    pub max_batch: usize,
    /// Most records queued; past it, `record` waits.
    pub queue: usize,
    /// Batches written at once, each in its own transaction on its own connection. One
    /// writer is bounded by one database session's speed, which a fast replica outruns.
    pub writes_in_flight: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(50),
            max_batch: 1024,
            queue: 8192,
            writes_in_flight: 2,
        }
    }
}

/// One model call's usage, as stored in `agentry.usage_records` with its event.
#[derive(Debug, Clone)]
pub struct UsageRow {
    /// Tenant.
    pub tenant: TenantId,
    /// Row id (also named by the event).
    pub id: Uuid,
    /// API key of the caller, when it is one.
    pub key_id: Option<Uuid>,
    /// End user of the caller, when it is one.
    pub user_id: Option<String>,
    /// `key:<id>` or `user:<sub>`.
    pub actor: String,
    /// Catalog model that answered.
    pub model: String,
    /// Provider that served it.
    pub provider: String,
    /// Prompt tokens.
    pub tokens_in: u32,
    /// Completion tokens.
    pub tokens_out: u32,
    /// Whether the tokens are an estimate.
    pub estimated: bool,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// When the call finished.
    pub at: DateTime<Utc>,
    /// Trace context of the request, carried to the event.
    pub traceparent: Option<String>,
}

impl UsageRow {
    /// The record of completion `c` made for `caller`.
    pub fn of(caller: &Caller, c: &Completion) -> Self {
        Self {
            tenant: caller.tenant.id,
            id: Uuid::now_v7(),
            key_id: caller.key_id(),
            user_id: caller.user_id().map(str::to_owned),
            actor: caller.actor(),
            model: c.model.clone(),
            provider: c.provider.clone(),
            tokens_in: c.usage.input_tokens,
            tokens_out: c.usage.output_tokens,
            estimated: c.usage_estimated,
            cost_micros: c.cost_micros,
            at: Utc::now(),
            traceparent: crate::telemetry::current_traceparent(),
        }
    }

    fn event_data(&self) -> Value {
        json!({
            "id": self.id, "source": "chat", "conversationId": null, "model": self.model,
            "provider": self.provider, "inputTokens": self.tokens_in,
            "outputTokens": self.tokens_out, "estimated": self.estimated,
            "costMicros": self.cost_micros,
        })
    }
}

enum Command {
    Record(UsageRow),
    /// Answered once every record queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Write what is queued, refuse new records, stop.
    Close(oneshot::Sender<()>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Record(r) => f.debug_tuple("Record").field(&r.id).finish(),
            Self::Flush(_) => f.write_str("Flush"),
            Self::Close(_) => f.write_str("Close"),
        }
    }
}

/// Hands usage records to the background writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UsageWriter {
    db: Db,
    tx: mpsc::Sender<Command>,
    /// Ends the writer's wait for more records early: a full batch is queued, or a flush or
    /// the close. Records alone do not wake it (see [`run`]).
    wake: Arc<Notify>,
    /// Records queued that make a full batch with the one the waiting writer holds.
    rest_of_a_batch: usize,
    /// `agentry_usage_queue_full_total`, when observed.
    queue_full: Option<Counter>,
}

impl UsageWriter {
    /// Starts the background writer on the current Tokio runtime, observing nothing.
    pub fn spawn(db: Db, config: UsageConfig) -> Self {
        Self::spawn_on(db, config, &tokio::runtime::Handle::current(), None)
    }

    /// Starts the background writer on `runtime` (the runtime's background thread, or the
    /// current one). With `metrics`, each written record's time in memory, from its call
    /// finishing to its batch committing, is observed in `agentry_usage_write_delay_seconds`,
    /// and each record that waited for room in `agentry_usage_queue_full_total`.
    pub fn spawn_on(
        db: Db,
        config: UsageConfig,
        runtime: &tokio::runtime::Handle,
        metrics: Option<&Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let wake = Arc::new(Notify::new());
        let delay = metrics.map(|m| m.usage_write_delay.clone());
        runtime.spawn(run(db.clone(), config, rx, wake.clone(), delay));
        Self {
            db,
            tx,
            wake,
            rest_of_a_batch: config.max_batch.clamp(1, config.queue.max(1)) - 1,
            queue_full: metrics.map(|m| m.usage_queue_full.clone()),
        }
    }

    /// Queues `record`, waiting while the queue is full. Once the writer has closed, writes
    /// the record directly.
    pub async fn record(&self, record: UsageRow) -> Result<(), DbError> {
        let sent = match self.tx.try_send(Command::Record(record)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(command)) => {
                // The database is behind: this request waits for room, and is counted.
                if let Some(counter) = &self.queue_full {
                    counter.inc();
                }
                self.tx.send(command).await
            }
            Err(TrySendError::Closed(command)) => Err(SendError(command)),
        };
        match sent {
            Ok(()) => {
                if self.tx.max_capacity() - self.tx.capacity() >= self.rest_of_a_batch {
                    self.wake.notify_one();
                }
                Ok(())
            }
            // Boxed: inline, this rarely taken write would make every caller's future ~15 KB
            // bigger, and futures are moved by value on the request path.
            Err(mpsc::error::SendError(Command::Record(record))) => {
                Box::pin(write(
                    &self.db,
                    record.tenant,
                    std::slice::from_ref(&record),
                ))
                .await
            }
            Err(_) => Ok(()),
        }
    }

    /// Waits until every record queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).await.is_ok() {
            self.wake.notify_one();
            let _ = wait.await;
        }
    }

    /// Writes what is queued and stops the writer (shutdown, after the HTTP server drained).
    /// Records handed over later are written directly by [`Self::record`].
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_ok() {
            self.wake.notify_one();
            let _ = wait.await;
        }
    }
}

/// Retries of a batch while closing, before its records are reported lost.
const CLOSING_ATTEMPTS: u32 = 3;
/// Longest pause between retries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The writer. It waits for the first record of a batch on the queue, then sleeps out the
/// batch's window without watching the queue, and takes what arrived meanwhile: so the thread
/// it runs on is woken about once a batch, not once a record (which, at a few thousand records
/// a second, switched the request path's core to it and back for every request). A full batch,
/// a flush or the close end the window early through `wake`.
async fn run(
    db: Db,
    config: UsageConfig,
    mut rx: mpsc::Receiver<Command>,
    wake: Arc<Notify>,
    delay: Option<Histogram>,
) {
    let writer = BatchWriter {
        db,
        max_batch: config.max_batch.max(1),
        delay,
        closing: Arc::new(AtomicBool::new(false)),
    };
    let in_flight = config.writes_in_flight.max(1);
    let mut writing = JoinSet::new();
    let mut pending: Vec<UsageRow> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        // Every sender gone: nothing more can arrive.
        let Some(first) = rx.recv().await else { break };
        // The window runs from when the first record was handed over, which may have been
        // while every write was busy.
        let waited = match &first {
            Command::Record(r) => (Utc::now() - r.at).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        take(first, &mut pending, &mut waiters, &mut closing);
        let deadline = tokio::time::Instant::now() + config.flush_interval.saturating_sub(waited);
        if waiters.is_empty() && closing.is_none() {
            // A backlog's first record has waited its window already: no sleep then.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = wake.notified() => {}
            }
        }
        while waiters.is_empty() && closing.is_none() && pending.len() < writer.max_batch {
            match rx.try_recv() {
                Ok(c) => take(c, &mut pending, &mut waiters, &mut closing),
                Err(_) => break,
            }
        }
        if closing.is_some() {
            // Writes already in flight give up after their last tries too.
            writer.closing.store(true, Ordering::Relaxed);
            // Senders now get their record back and write it themselves.
            rx.close();
            while let Some(c) = rx.recv().await {
                take(c, &mut pending, &mut waiters, &mut closing);
            }
        }
        while writing.len() >= in_flight {
            finished(writing.join_next().await);
        }
        if !pending.is_empty() {
            let (writer, batch) = (writer.clone(), std::mem::take(&mut pending));
            writing.spawn(async move { writer.write_all(batch).await });
        }
        if !waiters.is_empty() || closing.is_some() {
            // Every record queued before a flush or the close is in a write that has started.
            while let Some(done) = writing.join_next().await {
                finished(Some(done));
            }
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
    while let Some(done) = writing.join_next().await {
        finished(Some(done));
    }
    if !pending.is_empty() {
        writer.closing.store(true, Ordering::Relaxed);
        writer.write_all(pending).await;
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Reports a write task that did not end normally (a panic: its records are lost).
fn finished(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        tracing::error!(error = %e, "a usage write ended without finishing; its records are lost");
    }
}

fn take(
    command: Command,
    pending: &mut Vec<UsageRow>,
    waiters: &mut Vec<oneshot::Sender<()>>,
    closing: &mut Option<oneshot::Sender<()>>,
) {
    match command {
        Command::Record(r) => pending.push(r),
        Command::Flush(w) => waiters.push(w),
        Command::Close(w) => {
            // A second close waits like a flush.
            if closing.is_some() {
                waiters.push(w);
            } else {
                *closing = Some(w);
            }
        }
    }
}

/// The writer task's side of a batch: where it goes and what it observes.
#[derive(Clone)]
struct BatchWriter {
    db: Db,
    max_batch: usize,
    delay: Option<Histogram>,
    /// Set on close: a failing write then gives up after [`CLOSING_ATTEMPTS`] instead of
    /// holding shutdown, also one that started before.
    closing: Arc<AtomicBool>,
}

impl BatchWriter {
    /// Writes `records`, one transaction per tenant and chunk. A failed write is retried with
    /// backoff (holding the queue: requests wait rather than lose records); a write the
    /// database refuses for good (the tenant was deleted) is dropped and logged. While
    /// closing, a batch is tried [`CLOSING_ATTEMPTS`] times and then reported lost.
    async fn write_all(&self, records: Vec<UsageRow>) {
        let mut by_tenant: BTreeMap<TenantId, Vec<UsageRow>> = BTreeMap::new();
        for r in records {
            by_tenant.entry(r.tenant).or_default().push(r);
        }
        for (tenant, records) in by_tenant {
            for chunk in records.chunks(self.max_batch) {
                self.write_chunk(tenant, chunk).await;
            }
        }
    }

    async fn write_chunk(&self, tenant: TenantId, chunk: &[UsageRow]) {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match write(&self.db, tenant, chunk).await {
                Ok(()) => {
                    self.observe_delay(chunk);
                    return;
                }
                Err(e) if refused_for_good(&e) => {
                    tracing::error!(%tenant, records = chunk.len(), error = %e, "usage records refused by the database; dropped");
                    return;
                }
                Err(e) if self.closing.load(Ordering::Relaxed) && attempt >= CLOSING_ATTEMPTS => {
                    tracing::error!(%tenant, records = chunk.len(), error = %e, "usage records could not be written before shutdown; lost");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%tenant, records = chunk.len(), error = %e, "writing usage records failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Observes how long each record of a committed chunk was only in memory.
    fn observe_delay(&self, chunk: &[UsageRow]) {
        let Some(delay) = &self.delay else { return };
        let now = Utc::now();
        for r in chunk {
            delay.observe((now - r.at).to_std().unwrap_or_default().as_secs_f64());
        }
    }
}

/// Whether retrying cannot help: an integrity or access-rule violation (the tenant is gone,
/// row-level security refuses), or a tenant this role does not serve.
fn refused_for_good(e: &DbError) -> bool {
    match e {
        DbError::Sql(sqlx::Error::Database(e)) => e
            .code()
            .is_some_and(|code| code.starts_with("23") || code.starts_with("42")),
        DbError::WrongTenant { .. } => true,
        _ => false,
    }
}

/// Records whose columns are built between two yields to the scheduler.
const YIELD_EVERY: usize = 128;

/// The columns of a batch, bound as arrays (one `unnest` insert per table).
#[derive(Default)]
struct Columns {
    ids: Vec<Uuid>,
    key_ids: Vec<Option<Uuid>>,
    user_ids: Vec<Option<String>>,
    models: Vec<String>,
    tokens_in: Vec<i32>,
    tokens_out: Vec<i32>,
    costs: Vec<i64>,
    ats: Vec<DateTime<Utc>>,
    event_ids: Vec<Uuid>,
    subjects: Vec<String>,
    actors: Vec<String>,
    data: Vec<Value>,
    traceparents: Vec<Option<String>>,
}

impl Columns {
    /// Built a few records at a time: a batch of 1,024 takes about a millisecond of CPU, and
    /// the requests queued on this worker are let in meanwhile instead of waiting for all of it.
    async fn of(records: &[UsageRow]) -> Self {
        let mut c = Self::default();
        for (i, r) in records.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            c.ids.push(r.id);
            c.key_ids.push(r.key_id);
            c.user_ids.push(r.user_id.clone());
            c.models.push(r.model.clone());
            c.tokens_in
                .push(i32::try_from(r.tokens_in).unwrap_or(i32::MAX));
            c.tokens_out
                .push(i32::try_from(r.tokens_out).unwrap_or(i32::MAX));
            c.costs.push(r.cost_micros);
            c.ats.push(r.at);
            c.event_ids.push(Uuid::now_v7());
            c.subjects.push(r.id.to_string());
            c.actors.push(r.actor.clone());
            c.data.push(r.event_data());
            c.traceparents.push(r.traceparent.clone());
        }
        c
    }
}

/// One tenant's records, their `usage.recorded` events and outbox entries, in one transaction.
async fn write(db: &Db, tenant: TenantId, records: &[UsageRow]) -> Result<(), DbError> {
    let c = Columns::of(records).await;

    let mut tx = db.begin(tenant).await?;
    sqlx::query(
        "insert into agentry.usage_records
           (tenant_id, id, key_id, user_id, source, model, tokens_in, tokens_out, cost_micros,
            created_at)
         select $1, u.id, u.key_id, u.user_id, 'chat', u.model, u.tokens_in, u.tokens_out,
                u.cost_micros, u.at
         from unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int4[], $7::int4[],
                     $8::int8[], $9::timestamptz[])
           as u(id, key_id, user_id, model, tokens_in, tokens_out, cost_micros, at)",
    )
    .bind(tenant.0)
    .bind(&c.ids)
    .bind(&c.key_ids)
    .bind(&c.user_ids)
    .bind(&c.models)
    .bind(&c.tokens_in)
    .bind(&c.tokens_out)
    .bind(&c.costs)
    .bind(&c.ats)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into agentry.events
           (tenant_id, id, type, version, subject, actor, data, traceparent, created_at)
         select $1, e.id, 'usage.recorded', 1, e.subject, e.actor, e.data, e.traceparent, e.at
         from unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                     $7::timestamptz[])
           as e(id, subject, actor, data, traceparent, at)",
    )
    .bind(tenant.0)
    .bind(&c.event_ids)
    .bind(&c.subjects)
    .bind(&c.actors)
    .bind(&c.data)
    .bind(&c.traceparents)
    .bind(&c.ats)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into agentry.event_outbox (tenant_id, event_id) select $1, unnest($2::uuid[])",
    )
    .bind(tenant.0)
    .bind(&c.event_ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify('agentry_outbox', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
