//! The journal of a claimed run: each checkpoint is one statement, fenced by the lease.
//!
//! A checkpoint updates the run, appends its new steps and records their events (audit row
//! and outbox entry) in a single statement: the update is the fence (`where lease_owner =
//! <this replica> and status = 'running'`), and every insert reads the updated row, so a
//! replica that lost the run writes nothing at all. One statement is one round trip and one
//! commit; the per-step cost is what bounds a run's throughput (docs/benchmarks.md).

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use uuid::Uuid;

use super::engine::Journal;
use super::hub::RunHub;
use super::model::{Run, RunStatus, StepRecord, StepStatus};
use crate::db::{Db, DbError};
use crate::metrics::Metrics;
use crate::tenancy::TenantId;

/// The journal of a claimed run: checkpoints fenced by the lease, with events and metrics.
pub struct PgJournal<'a> {
    /// Database.
    pub db: &'a Db,
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
}

impl From<sqlx::Error> for CheckpointError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(DbError::Sql(e))
    }
}

/// The run update, the step rows, the events and their outbox entries. `$9` and `$10` are
/// JSON arrays of steps and events; the inserts select from the updated row, so they write
/// nothing when the fence fails. A run that leaves `running` also wakes the relay (`$12`);
/// step events alone do not, because PostgreSQL serialises the commits of notifying
/// transactions server-wide and a notification per step would cap checkpoints (their events
/// go out at the relay's next poll, `RelayConfig::poll_interval`).
const CHECKPOINT: &str = r#"
with run as (
  update agentry.workflow_runs r
     set status = $4, cursor = $5, result = $6, error = $7, wake_at = $8,
         lease_owner = case when $4 = 'running' then r.lease_owner end,
         lease_until = case when $4 = 'running' then r.lease_until end,
         finished_at = case when $4 in ('pending', 'running', 'waiting') then null else now() end,
         updated_at = now()
   where r.tenant_id = $1 and r.id = $2 and r.lease_owner = $3 and r.status = 'running'
  returning r.tenant_id, r.id),
steps as (
  insert into agentry.workflow_steps
    (tenant_id, run_id, seq, node, kind, visit, parent, status, attempts, input, output, error,
     started_at, finished_at)
  select run.tenant_id, run.id, s.seq, s.node, s.kind, s.visit, s.parent, s.status, s.attempts,
         s.input, s.output, s.error, s."startedAt", s."finishedAt"
    from run, jsonb_to_recordset($9) as s(seq integer, node text, kind text, visit integer,
         parent integer, status text, attempts integer, input jsonb, output jsonb, error text,
         "startedAt" timestamptz, "finishedAt" timestamptz)),
events as (
  insert into agentry.events (tenant_id, id, type, version, subject, actor, data, traceparent)
  select run.tenant_id, e.id, e.type, 1, e.subject, e.actor, e.data, $11
    from run, jsonb_to_recordset($10) as e(id uuid, type text, subject text, actor text,
         data jsonb)
  returning tenant_id, id),
outbox as (
  insert into agentry.event_outbox (tenant_id, event_id) select tenant_id, id from events),
notified as (
  select pg_notify('agentry_outbox', '') from run where $12)
select (select count(*) from run) as held, (select count(*) from notified) as notified
"#;

/// An event row of a checkpoint (see docs/events.md for the types and payloads).
#[derive(Serialize)]
struct EventRow<'a> {
    id: Uuid,
    #[serde(rename = "type")]
    type_: &'static str,
    subject: String,
    actor: &'a str,
    data: Value,
}

impl Journal for PgJournal<'_> {
    type Error = CheckpointError;

    async fn checkpoint(&mut self, run: &Run, steps: &[StepRecord]) -> Result<(), CheckpointError> {
        let wake_at = (run.status == RunStatus::Waiting)
            .then(|| run.cursor.wait.as_ref().map(|w| w.until.min(run.deadline)))
            .flatten();
        let mut events: Vec<EventRow> = steps.iter().map(|s| self.step_event(run, s)).collect();
        let status_changed = run.status != RunStatus::Running;
        if status_changed {
            events.push(self.run_event(run));
        }
        let mut statement = self.db.statement(self.tenant).await?;
        let (held, _notified): (i64, i64) = sqlx::query_as(CHECKPOINT)
            .bind(self.tenant.0)
            .bind(run.id)
            .bind(self.owner)
            .bind(run.status.as_str())
            .bind(Json(&run.cursor))
            .bind(&run.result)
            .bind(&run.error)
            .bind(wake_at)
            .bind(Json(steps))
            .bind(Json(&events))
            .bind(crate::telemetry::current_traceparent())
            .bind(status_changed)
            .fetch_one(statement.conn())
            .await?;
        statement.finish().await?;
        if held == 0 {
            return Err(CheckpointError::LeaseLost);
        }
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
    fn run_event(&self, run: &Run) -> EventRow<'_> {
        EventRow {
            id: Uuid::now_v7(),
            type_: run_event_type(run.status),
            subject: run.id.to_string(),
            actor: &self.actor,
            data: json!({"runId": run.id, "workflow": run.workflow.name,
                         "status": run.status, "error": run.error,
                         "wait": run.cursor.wait}),
        }
    }

    /// A step's event.
    fn step_event(&self, run: &Run, step: &StepRecord) -> EventRow<'_> {
        let type_ = match (step.kind.as_str(), step.status) {
            ("handoff", StepStatus::Succeeded | StepStatus::Waiting) => "workflow.handoff",
            ("approval", StepStatus::Waiting) => "workflow.approval.requested",
            (_, StepStatus::Failed) => "workflow.step.failed",
            _ => "workflow.step.completed",
        };
        let duration_ms = (step.finished_at - step.started_at).num_milliseconds();
        EventRow {
            id: Uuid::now_v7(),
            type_,
            subject: run.id.to_string(),
            actor: &self.actor,
            data: json!({"runId": run.id, "workflow": run.workflow.name, "seq": step.seq,
                         "node": step.node, "kind": step.kind, "status": step.status,
                         "attempts": step.attempts, "error": step.error,
                         "output": if type_ == "workflow.step.completed" { Value::Null }
                                   else { step.output.clone().unwrap_or(Value::Null) },
                         "durationMs": duration_ms}),
        }
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
