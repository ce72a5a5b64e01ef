//! The journal of a claimed run: every step is checkpointed, fenced by the run's lease, and
//! the checkpoints of all the runs a replica drives are group-committed.
//!
//! A checkpoint updates the run, appends its new steps and records their events (audit row
//! and outbox entry). The update is the fence (`where lease_owner = <this replica> and status
//! = 'running'`) and every insert reads the updated rows, so a replica that lost a run writes
//! nothing for it. Drives hand their checkpoints to one [`CheckpointWriter`] per process,
//! which writes whatever is queued, per tenant, as one statement (one round trip, one commit)
//! and answers each drive once it is durable: a drive still waits for its own checkpoint
//! before the next step, but concurrent runs share the statement and the commit, like the
//! group commit of a database. The per-statement cost, not the rows, is what bounds
//! checkpoint throughput (docs/benchmarks.md, "Workflow orchestrator").

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::engine::Journal;
use super::hub::RunHub;
use super::model::{Run, RunStatus, StepRecord, StepStatus};
use crate::db::{Db, DbError};
use crate::events::{EventRow, NewEvent};
use crate::metrics::Metrics;
use crate::tenancy::TenantId;

/// Most checkpoints written by one statement.
const MAX_BATCH: usize = 128;

/// The journal of a claimed run: checkpoints fenced by the lease, with events and metrics.
pub struct PgJournal<'a> {
    /// Where checkpoints are written.
    pub writer: &'a CheckpointQueue,
    /// Tenant.
    pub tenant: TenantId,
    /// Tenant name (metrics).
    pub tenant_name: &'a str,
    /// This replica's lease owner id.
    pub owner: Uuid,
    /// Signals for subscribers.
    pub hub: &'a RunHub,
    /// Metrics (none in benchmarks).
    pub metrics: Option<&'a Metrics>,
    /// Who started the run (the actor of its events).
    pub actor: String,
}

/// Why a checkpoint did not land.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// This replica no longer holds the run (cancelled, or another replica took it over).
    #[error("the run's lease is lost (cancelled or taken over)")]
    LeaseLost,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The database failed the statement that carried this checkpoint.
    #[error("writing the checkpoint failed: {0}")]
    Write(Arc<DbError>),
    /// The writer has stopped (the process is shutting down).
    #[error("the checkpoint writer has stopped")]
    Closed,
}

impl From<sqlx::Error> for CheckpointError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(DbError::Sql(e))
    }
}

/// The run updates, the step rows, the events and their outbox entries of a batch of one
/// tenant's checkpoints (`$2`, a JSON array of [`Checkpoint`]). The inserts select from the
/// updated rows, so they write nothing for a run whose fence failed. A run that leaves
/// `running` also wakes the relay; step events alone do not, because PostgreSQL serialises
/// the commits of notifying transactions server-wide and a notification per step would cap
/// checkpoints (their events go out at the relay's next poll, `RelayConfig::poll_interval`).
const CHECKPOINT: &str = r#"
with batch as (
  select * from jsonb_to_recordset($2) as c(id uuid, owner uuid, status text, cursor jsonb,
         result jsonb, error text, "wakeAt" timestamptz, steps jsonb, events jsonb,
         notify boolean)),
run as (
  update agentry.workflow_runs r
     set status = c.status, cursor = c.cursor, result = c.result, error = c.error,
         wake_at = c."wakeAt",
         lease_owner = case when c.status = 'running' then r.lease_owner end,
         lease_until = case when c.status = 'running' then r.lease_until end,
         finished_at = case when c.status in ('pending', 'running', 'waiting') then null
                            else now() end,
         updated_at = now()
    from batch c
   where r.tenant_id = $1 and r.id = c.id and r.lease_owner = c.owner and r.status = 'running'
  returning r.tenant_id, r.id, c.steps, c.events, c.notify),
steps as (
  insert into agentry.workflow_steps
    (tenant_id, run_id, seq, node, kind, visit, parent, status, attempts, input, output, error,
     started_at, finished_at)
  select run.tenant_id, run.id, s.seq, s.node, s.kind, s.visit, s.parent, s.status, s.attempts,
         s.input, s.output, s.error, s."startedAt", s."finishedAt"
    from run, jsonb_to_recordset(run.steps) as s(seq integer, node text, kind text,
         visit integer, parent integer, status text, attempts integer, input jsonb,
         output jsonb, error text, "startedAt" timestamptz, "finishedAt" timestamptz)),
events as (
  insert into agentry.events (tenant_id, id, type, version, subject, actor, data, traceparent)
  select run.tenant_id, e.id, e.type, e.version, e.subject, e.actor, e.data, e.traceparent
    from run, jsonb_to_recordset(run.events) as e(id uuid, type text, version integer,
         subject text, actor text, data jsonb, traceparent text)
  returning tenant_id, id),
outbox as (
  insert into agentry.event_outbox (tenant_id, event_id) select tenant_id, id from events),
notified as (
  select pg_notify('agentry_outbox', '') where exists (select 1 from run where run.notify))
select run.id, (select count(*) from notified) as notified from run
"#;

/// One run's checkpoint as the writer sends it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    id: Uuid,
    owner: Uuid,
    status: &'static str,
    cursor: Value,
    result: Option<Value>,
    error: Option<String>,
    wake_at: Option<DateTime<Utc>>,
    steps: Value,
    events: Vec<EventRow>,
    notify: bool,
}

/// A checkpoint waiting for the writer, and where its outcome goes.
struct Queued {
    tenant: TenantId,
    checkpoint: Checkpoint,
    done: oneshot::Sender<Result<(), CheckpointError>>,
}

/// The handle drives queue their checkpoints on (cheap to clone).
#[derive(Clone)]
pub struct CheckpointQueue(mpsc::Sender<Queued>);

/// The process's checkpoint writer: a task that writes queued checkpoints in batches.
pub struct CheckpointWriter {
    queue: CheckpointQueue,
    task: JoinHandle<()>,
}

impl CheckpointWriter {
    /// Starts the writer on `db`.
    pub fn spawn(db: Db) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        Self {
            queue: CheckpointQueue(tx),
            task: tokio::spawn(write_batches(db, rx)),
        }
    }

    /// Where drives queue their checkpoints.
    pub fn queue(&self) -> &CheckpointQueue {
        &self.queue
    }

    /// Stops taking checkpoints and returns once every queued one is written (or failed):
    /// call it after the drives have stopped, before handing their runs back.
    pub async fn close(self) {
        drop(self.queue);
        let _ = self.task.await;
    }
}

async fn write_batches(db: Db, mut rx: mpsc::Receiver<Queued>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut queued, MAX_BATCH).await > 0 {
        let mut by_tenant: BTreeMap<TenantId, Vec<Queued>> = BTreeMap::new();
        for item in queued.drain(..) {
            by_tenant.entry(item.tenant).or_default().push(item);
        }
        for (tenant, batch) in by_tenant {
            write_tenant_batch(&db, tenant, batch).await;
        }
    }
}

/// Writes one tenant's batch and answers each drive. When the statement fails, each
/// checkpoint is written alone, so that one bad checkpoint fails only its own run.
async fn write_tenant_batch(db: &Db, tenant: TenantId, batch: Vec<Queued>) {
    let checkpoints: Vec<&Checkpoint> = batch.iter().map(|q| &q.checkpoint).collect();
    match write(db, tenant, &checkpoints).await {
        Ok(held) => {
            for item in batch {
                let landed = held.contains(&item.checkpoint.id);
                let _ = item.done.send(if landed {
                    Ok(())
                } else {
                    Err(CheckpointError::LeaseLost)
                });
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(item) = batch.into_iter().next() {
                let _ = item.done.send(Err(CheckpointError::Write(Arc::new(e))));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, checkpoints = batch.len(),
                "a batch of workflow checkpoints failed; writing them one by one");
            for item in batch {
                let outcome = match write(db, tenant, &[&item.checkpoint]).await {
                    Ok(held) if held.contains(&item.checkpoint.id) => Ok(()),
                    Ok(_) => Err(CheckpointError::LeaseLost),
                    Err(e) => Err(CheckpointError::Write(Arc::new(e))),
                };
                let _ = item.done.send(outcome);
            }
        }
    }
}

/// Runs the batch statement; returns the ids of the runs whose fence held.
async fn write(db: &Db, tenant: TenantId, batch: &[&Checkpoint]) -> Result<Vec<Uuid>, DbError> {
    let mut statement = db.statement(tenant).await?;
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(CHECKPOINT)
        .bind(tenant.0)
        .bind(Json(batch))
        .fetch_all(statement.conn())
        .await?;
    statement.finish().await?;
    Ok(rows.into_iter().map(|(id, _)| id).collect())
}

impl Journal for PgJournal<'_> {
    type Error = CheckpointError;

    async fn checkpoint(&mut self, run: &Run, steps: &[StepRecord]) -> Result<(), CheckpointError> {
        let wake_at = (run.status == RunStatus::Waiting)
            .then(|| run.cursor.wait.as_ref().map(|w| w.until.min(run.deadline)))
            .flatten();
        let traceparent = crate::telemetry::current_traceparent();
        let mut events: Vec<EventRow> = steps
            .iter()
            .map(|s| self.step_event(run, s, traceparent.clone()))
            .collect();
        let status_changed = run.status != RunStatus::Running;
        if status_changed {
            events.push(self.run_event(run, traceparent));
        }
        let checkpoint = Checkpoint {
            id: run.id,
            owner: self.owner,
            status: run.status.as_str(),
            cursor: serde_json::to_value(&run.cursor).map_err(sqlx::Error::decode)?,
            result: run.result.clone(),
            error: run.error.clone(),
            wake_at,
            steps: serde_json::to_value(steps).map_err(sqlx::Error::decode)?,
            events,
            notify: status_changed,
        };
        let (done, outcome) = oneshot::channel();
        let queued = Queued {
            tenant: self.tenant,
            checkpoint,
            done,
        };
        self.writer
            .0
            .send(queued)
            .await
            .map_err(|_| CheckpointError::Closed)?;
        outcome.await.map_err(|_| CheckpointError::Closed)??;
        if let Some(metrics) = self.metrics {
            for step in steps {
                metrics.workflow_step(self.tenant_name, &run.workflow.name, step);
            }
            if run.status.is_terminal() {
                metrics.workflow_run(self.tenant_name, &run.workflow.name, run.status.as_str());
            }
        }
        self.hub.changed(run.id);
        Ok(())
    }
}

impl PgJournal<'_> {
    /// The event of a run that left `running`.
    fn run_event(&self, run: &Run, traceparent: Option<String>) -> EventRow {
        let data = json!({"runId": run.id, "workflow": run.workflow.name,
                          "status": run.status, "error": run.error, "wait": run.cursor.wait});
        EventRow::new(
            NewEvent::new(run_event_type(run.status), data)
                .subject(run.id.to_string())
                .actor(self.actor.clone()),
            traceparent,
        )
    }

    /// A step's event.
    fn step_event(&self, run: &Run, step: &StepRecord, traceparent: Option<String>) -> EventRow {
        let type_ = match (step.kind.as_str(), step.status) {
            ("handoff", StepStatus::Succeeded | StepStatus::Waiting) => "workflow.handoff",
            ("approval", StepStatus::Waiting) => "workflow.approval.requested",
            (_, StepStatus::Failed) => "workflow.step.failed",
            _ => "workflow.step.completed",
        };
        let duration_ms = (step.finished_at - step.started_at).num_milliseconds();
        let data = json!({"runId": run.id, "workflow": run.workflow.name, "seq": step.seq,
                          "node": step.node, "kind": step.kind, "status": step.status,
                          "attempts": step.attempts, "error": step.error,
                          "output": if type_ == "workflow.step.completed" { Value::Null }
                                    else { step.output.clone().unwrap_or(Value::Null) },
                          "durationMs": duration_ms});
        EventRow::new(
            NewEvent::new(type_, data)
                .subject(run.id.to_string())
                .actor(self.actor.clone()),
            traceparent,
        )
    }
}

fn run_event_type(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Pending | RunStatus::Running => "workflow.run.running",
        RunStatus::Waiting => "workflow.run.waiting",
        RunStatus::Succeeded => "workflow.run.succeeded",
        RunStatus::Failed => "workflow.run.failed",
        RunStatus::Denied => "workflow.run.denied",
        RunStatus::HandedOff => "workflow.run.handed_off",
        RunStatus::Cancelled => "workflow.run.cancelled",
        RunStatus::TimedOut => "workflow.run.timed_out",
    }
}
