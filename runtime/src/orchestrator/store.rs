//! Runs and steps in PostgreSQL. Every statement runs tenant-scoped ([`Db::begin`],
//! [`Db::statement`]), so row-level security keeps each tenant's runs to itself.
//!
//! The lease is the fence: a worker writes a checkpoint ([`super::journal`]) only `where
//! lease_owner = <itself> and status = 'running'`. A replica that lost its lease (it stalled
//! past the lease, or the run was cancelled) finds no row to update, stops, and leaves the
//! run to whoever holds it.

use std::time::Duration;

use agentry_crds::bundle::CompiledWorkflow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::model::{Cursor, Decision, Run, RunStatus, StepRecord, StepStatus, WaitKind};
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::events::{self, NewEvent};
use crate::gateway::Principal;
use crate::tenancy::TenantId;

/// Who started a run, stored so the run's model calls are attributed (and rate-limited) like
/// the starter's own requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StoredPrincipal {
    /// An API key.
    ApiKey {
        /// Its row id.
        id: Uuid,
    },
    /// An end user.
    User {
        /// The user claim.
        subject: String,
    },
}

impl From<&Principal> for StoredPrincipal {
    fn from(p: &Principal) -> Self {
        match p {
            Principal::ApiKey { id } => Self::ApiKey { id: *id },
            Principal::User { subject } => Self::User {
                subject: subject.clone(),
            },
        }
    }
}

impl From<StoredPrincipal> for Principal {
    fn from(p: StoredPrincipal) -> Self {
        match p {
            StoredPrincipal::ApiKey { id } => Principal::ApiKey { id },
            StoredPrincipal::User { subject } => Principal::User { subject },
        }
    }
}

/// A run row.
#[derive(Debug, Clone, FromRow)]
pub struct RunRow {
    /// Run id.
    pub id: Uuid,
    /// Workflow name.
    pub workflow: String,
    /// Workflow revision the run started with.
    pub revision: String,
    /// The workflow as it was when the run started.
    pub spec: Json<CompiledWorkflow>,
    /// Input.
    pub input: Value,
    /// Flag values.
    pub flags: Value,
    /// Status name.
    pub status: String,
    /// Position.
    pub cursor: Json<Cursor>,
    /// Result.
    pub result: Option<Value>,
    /// Error.
    pub error: Option<String>,
    /// `key:<id>` or `user:<subject>`.
    pub started_by: String,
    /// The starter.
    pub principal: Json<StoredPrincipal>,
    /// Conversation the run belongs to (a chat that started with a workflow).
    pub conversation_id: Option<Uuid>,
    /// Deadline.
    pub deadline: DateTime<Utc>,
    /// Times a replica claimed the run.
    pub claims: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

const RUN_COLUMNS: &str = "id, workflow, revision, spec, input, flags, status, cursor, result, \
    error, started_by, principal, conversation_id, deadline, claims, created_at, updated_at, \
    finished_at";

impl RunRow {
    /// The status (an unknown stored name reads as failed; the check constraint forbids it).
    pub fn status(&self) -> RunStatus {
        RunStatus::parse(&self.status).unwrap_or(RunStatus::Failed)
    }

    /// The run as the engine drives it.
    pub fn to_run(&self) -> Run {
        Run {
            id: self.id,
            workflow: self.spec.0.clone(),
            input: self.input.clone(),
            flags: self.flags.clone(),
            status: self.status(),
            cursor: self.cursor.0.clone(),
            result: self.result.clone(),
            error: self.error.clone(),
            deadline: self.deadline,
        }
    }
}

/// Inserts a new run and its `workflow.run.created` event.
pub async fn create(
    db: &Db,
    tenant: TenantId,
    run: &Run,
    started_by: &str,
    principal: &StoredPrincipal,
    conversation: Option<Uuid>,
) -> Result<RunRow, ApiError> {
    let mut tx = db.begin(tenant).await?;
    let row: RunRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into agentry.workflow_runs
           (tenant_id, id, workflow, revision, spec, input, flags, status, cursor, started_by,
            principal, conversation_id, deadline)
         values ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12)
         returning {RUN_COLUMNS}"
    )))
    .bind(tenant.0)
    .bind(run.id)
    .bind(&run.workflow.name)
    .bind(&run.workflow.revision)
    .bind(Json(&run.workflow))
    .bind(&run.input)
    .bind(&run.flags)
    .bind(Json(&run.cursor))
    .bind(started_by)
    .bind(Json(principal))
    .bind(conversation)
    .bind(run.deadline)
    .fetch_one(&mut *tx)
    .await?;
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(
            "workflow.run.created",
            json!({"runId": run.id, "workflow": run.workflow.name,
                   "revision": run.workflow.revision}),
        )
        .subject(run.id.to_string())
        .actor(started_by),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// One run.
pub async fn get(db: &Db, tenant: TenantId, id: Uuid) -> Result<Option<RunRow>, ApiError> {
    let mut tx = db.begin(tenant).await?;
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from agentry.workflow_runs where tenant_id = $1 and id = $2"
    )))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Filters of [`list`].
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only runs started by this actor.
    pub started_by: Option<String>,
    /// Runs created before this run id (UUIDv7 order), for paging.
    pub before: Option<Uuid>,
    /// Most rows.
    pub limit: i64,
}

/// Runs, newest first.
pub async fn list(db: &Db, tenant: TenantId, f: &ListFilter) -> Result<Vec<RunRow>, ApiError> {
    let mut tx = db.begin(tenant).await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from agentry.workflow_runs
         where tenant_id = $1 and ($2::text is null or workflow = $2)
           and ($3::text is null or status = $3) and ($4::text is null or started_by = $4)
           and ($5::uuid is null or id < $5)
         order by id desc limit $6"
    )))
    .bind(tenant.0)
    .bind(&f.workflow)
    .bind(f.status.map(RunStatus::as_str))
    .bind(&f.started_by)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

#[derive(FromRow)]
struct StepRow {
    seq: i32,
    node: String,
    kind: String,
    visit: i32,
    parent: Option<i32>,
    status: String,
    attempts: i32,
    input: Option<Value>,
    output: Option<Value>,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl From<StepRow> for StepRecord {
    fn from(r: StepRow) -> Self {
        Self {
            seq: to_u32(r.seq),
            node: r.node,
            kind: r.kind,
            visit: to_u32(r.visit),
            parent: r.parent.map(to_u32),
            status: StepStatus::parse(&r.status).unwrap_or(StepStatus::Failed),
            attempts: to_u32(r.attempts),
            input: r.input,
            output: r.output,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// Steps of a run with `seq >= from`, in order.
pub async fn steps(
    db: &Db,
    tenant: TenantId,
    run: Uuid,
    from: u32,
) -> Result<Vec<StepRecord>, ApiError> {
    let mut tx = db.begin(tenant).await?;
    let rows: Vec<StepRow> = sqlx::query_as(
        "select seq, node, kind, visit, parent, status, attempts, input, output, error,
                started_at, finished_at
         from agentry.workflow_steps where tenant_id = $1 and run_id = $2 and seq >= $3
         order by seq",
    )
    .bind(tenant.0)
    .bind(run)
    .bind(to_i32(from))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(StepRecord::from).collect())
}

/// Claims up to `limit` runs that need a replica: new or resumed runs, runs whose lease
/// expired (their replica died or stalled), and paused runs whose wait is over. Rows another
/// replica is claiming right now are skipped, not waited for.
pub async fn claim(
    db: &Db,
    tenant: TenantId,
    owner: Uuid,
    lease: Duration,
    limit: i64,
) -> Result<Vec<RunRow>, DbError> {
    let mut tx = db.begin(tenant).await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        // The CTE's columns are renamed so that RUN_COLUMNS stays unambiguous in RETURNING.
        "with runnable as (
           select tenant_id as runnable_tenant, id as runnable_id from agentry.workflow_runs
           where tenant_id = $1
             and (status = 'pending'
                  or (status = 'running' and lease_until < now())
                  or (status = 'waiting' and wake_at <= now()))
           order by created_at
           limit $4
           for update skip locked)
         update agentry.workflow_runs
            set status = 'running', lease_owner = $2,
                lease_until = now() + make_interval(secs => $3), claims = claims + 1,
                updated_at = now()
           from runnable
          where tenant_id = runnable_tenant and id = runnable_id
         returning {RUN_COLUMNS}"
    )))
    .bind(tenant.0)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Extends the lease; false when this replica no longer holds it (cancelled, or taken over).
pub async fn heartbeat(
    db: &Db,
    tenant: TenantId,
    run: Uuid,
    owner: Uuid,
    lease: Duration,
) -> Result<bool, DbError> {
    let mut tx = db.begin(tenant).await?;
    let updated = sqlx::query(
        "update agentry.workflow_runs set lease_until = now() + make_interval(secs => $4)
         where tenant_id = $1 and id = $2 and lease_owner = $3 and status = 'running'",
    )
    .bind(tenant.0)
    .bind(run)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(updated == 1)
}

/// Why a decision or a cancellation was refused.
#[derive(Debug)]
pub enum ChangeError {
    /// No such run for this tenant.
    NotFound,
    /// The run is not in a state that accepts the change.
    Conflict(String),
    /// The database failed.
    Api(ApiError),
}

impl From<ApiError> for ChangeError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> Self {
        Self::Api(e.into())
    }
}

impl From<DbError> for ChangeError {
    fn from(e: DbError) -> Self {
        Self::Api(e.into())
    }
}

async fn lock(conn: &mut PgConnection, tenant: TenantId, id: Uuid) -> Result<RunRow, ChangeError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from agentry.workflow_runs
         where tenant_id = $1 and id = $2 for update"
    )))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ChangeError::NotFound)
}

/// Records a person's decision on a paused run and makes it runnable again.
pub async fn decide(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
    decision: Decision,
) -> Result<RunRow, ChangeError> {
    let mut tx = db.begin(tenant).await?;
    let row = lock(&mut tx, tenant, id).await?;
    let mut cursor = row.cursor.0.clone();
    let wait = match (&cursor.wait, row.status()) {
        (Some(wait), RunStatus::Waiting) if cursor.decision.is_none() => wait.clone(),
        _ => {
            return Err(ChangeError::Conflict(format!(
                "run {id} is {} and waits for no decision",
                row.status
            )));
        }
    };
    let actor = decision.approver.clone();
    let event = json!({"runId": id, "workflow": row.workflow, "node": wait.node,
                       "kind": wait.kind, "approved": decision.approve,
                       "comment": decision.comment, "approver": decision.approver});
    cursor.decision = Some(decision);
    let row: RunRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update agentry.workflow_runs set cursor = $3, status = 'pending', wake_at = null,
           updated_at = now()
         where tenant_id = $1 and id = $2 returning {RUN_COLUMNS}"
    )))
    .bind(tenant.0)
    .bind(id)
    .bind(Json(&cursor))
    .fetch_one(&mut *tx)
    .await?;
    let type_ = match wait.kind {
        WaitKind::Approval => "workflow.approval.decided",
        WaitKind::Handoff => "workflow.handoff.resumed",
    };
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(type_, event)
            .subject(id.to_string())
            .actor(actor),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Cancels a run that has not ended. A replica driving it stops at its next checkpoint or
/// heartbeat, whichever comes first.
pub async fn cancel(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
    actor: &str,
    reason: Option<&str>,
) -> Result<RunRow, ChangeError> {
    let mut tx = db.begin(tenant).await?;
    let row = lock(&mut tx, tenant, id).await?;
    if row.status().is_terminal() {
        return Err(ChangeError::Conflict(format!(
            "run {id} already ended ({})",
            row.status
        )));
    }
    let error = format!(
        "cancelled by {actor}{}",
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    let row: RunRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update agentry.workflow_runs set status = 'cancelled', error = $3, lease_owner = null,
           lease_until = null, wake_at = null, finished_at = now(), updated_at = now()
         where tenant_id = $1 and id = $2 returning {RUN_COLUMNS}"
    )))
    .bind(tenant.0)
    .bind(id)
    .bind(&error)
    .fetch_one(&mut *tx)
    .await?;
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(
            "workflow.run.cancelled",
            json!({"runId": id, "workflow": row.workflow, "error": error}),
        )
        .subject(id.to_string())
        .actor(actor),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}
