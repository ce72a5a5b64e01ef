//! The worker: claims runnable runs of the tenants this process serves and drives them, at
//! most `concurrency` at once. While a run is driven its lease is renewed every third of the
//! lease; when a renewal finds the lease gone (the run was cancelled, or this replica stalled
//! and another took over) the drive stops. A replica that dies simply stops renewing: its runs
//! are claimed again once their leases expire, and continue from their last checkpoint.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::engine;
use super::executor::LiveExecutor;
use super::journal::{CheckpointQueue, CheckpointWriter, PgJournal};
use super::model::RunStatus;
use super::store::{self, RunRow};
use crate::gateway::{Caller, Scope};
use crate::state::AppState;
use crate::tenancy::TenantHandle;

/// Runs the worker until shutdown; then hands the runs it still holds back (status `pending`,
/// no lease) so that the next replica continues them without waiting for the lease to expire.
pub async fn run(state: AppState) {
    let hub = state.runs.clone();
    let permits = Arc::new(Semaphore::new(hub.config.concurrency.max(1)));
    let writer = CheckpointWriter::spawn(state.db.clone());
    let mut drives = JoinSet::new();
    loop {
        while drives.try_join_next().is_some() {}
        claim_all(&state, writer.queue(), &permits, &mut drives).await;
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            () = hub.woken() => {}
            () = tokio::time::sleep(hub.config.poll) => {}
        }
    }
    drives.shutdown().await;
    // Checkpoints the stopped drives had queued land before their runs are handed back.
    writer.close().await;
    for tenant in state.tenants.all() {
        if let Err(e) = release(&state, &tenant, hub.owner).await {
            tracing::warn!(tenant = %tenant.name, error = %e, "could not release workflow leases");
        }
    }
}

async fn claim_all(
    state: &AppState,
    writer: &CheckpointQueue,
    permits: &Arc<Semaphore>,
    drives: &mut JoinSet<()>,
) {
    let hub = &state.runs;
    for tenant in state.tenants.all() {
        let free = permits.available_permits();
        if free == 0 {
            return;
        }
        let limit = i64::try_from(free).unwrap_or(i64::MAX);
        let rows = match store::claim(&state.db, tenant.id, hub.owner, hub.config.lease, limit)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(tenant = %tenant.name, error = %e, "claiming workflow runs failed");
                continue;
            }
        };
        for row in rows {
            // Claimed with at most `free` rows, so a permit is always there.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            drives.spawn(drive(
                state.clone(),
                writer.clone(),
                tenant.clone(),
                row,
                permit,
            ));
        }
    }
}

async fn drive(
    state: AppState,
    writer: CheckpointQueue,
    tenant: Arc<TenantHandle>,
    row: RunRow,
    _permit: OwnedSemaphorePermit,
) {
    let caller = Caller {
        tenant: tenant.clone(),
        principal: row.principal.0.clone().into(),
        scopes: vec![Scope::Workflows, Scope::Chat],
    };
    let mut run = row.to_run();
    run.status = RunStatus::Running;
    let executor = LiveExecutor::new(state.clone(), caller);
    let hub = &state.runs;
    let mut journal = PgJournal {
        writer: &writer,
        tenant: tenant.id,
        tenant_name: &tenant.name,
        owner: hub.owner,
        hub,
        metrics: Some(&state.metrics),
        actor: row.started_by.clone(),
    };
    let id = run.id;
    tracing::debug!(tenant = %tenant.name, run = %id, claims = row.claims, "driving workflow run");
    tokio::select! {
        result = engine::drive(&mut run, &executor, &mut journal) => {
            if let Err(e) = result {
                tracing::info!(tenant = %tenant.name, run = %id, error = %e, "workflow run stopped");
            }
        }
        () = keep_lease(&state, &tenant, id) => {
            tracing::info!(tenant = %tenant.name, run = %id, "workflow run lease lost; stopped");
        }
        () = state.shutdown.cancelled() => {}
    }
}

/// Renews the lease until it cannot; returns when the lease is lost.
async fn keep_lease(state: &AppState, tenant: &TenantHandle, run: Uuid) {
    let hub = &state.runs;
    let every = hub.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match store::heartbeat(&state.db, tenant.id, run, hub.owner, hub.config.lease).await {
            Ok(true) => {}
            Ok(false) => return,
            // The database is away: the next checkpoint will fail too, or the renewal after.
            Err(e) => tracing::warn!(run = %run, error = %e, "renewing a workflow lease failed"),
        }
    }
}

async fn release(
    state: &AppState,
    tenant: &TenantHandle,
    owner: Uuid,
) -> Result<(), crate::db::DbError> {
    let mut tx = state.db.begin(tenant.id).await?;
    sqlx::query(
        "update agentry.workflow_runs set status = 'pending', lease_owner = null,
           lease_until = null, updated_at = now()
         where tenant_id = $1 and lease_owner = $2 and status = 'running'",
    )
    .bind(tenant.id.0)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
