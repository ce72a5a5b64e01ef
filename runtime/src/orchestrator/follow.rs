//! Following a run as it progresses: its new steps and status changes, read from the
//! database whenever the hub says the run changed (or at the poll interval, for runs driven
//! by another replica). Used by the SSE endpoint, `/ws/chat` subscriptions and `wait`.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

use super::api::RunView;
use super::model::{RunStatus, StepRecord};
use super::store::{self, RunRow};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tenancy::TenantId;

/// How often a follower re-reads a run nobody signalled about.
const POLL: Duration = Duration::from_secs(1);

/// One thing that happened to a run.
#[derive(Debug, Clone)]
pub enum RunUpdate {
    /// A step was checkpointed.
    Step(StepRecord),
    /// The run's status changed (the first update is always the current status).
    Status(Box<RunView>),
}

struct Follower {
    state: AppState,
    tenant: TenantId,
    run: Uuid,
    changes: broadcast::Receiver<Uuid>,
    next_seq: u32,
    status: Option<RunStatus>,
    queue: VecDeque<RunUpdate>,
    ended: bool,
}

impl Follower {
    async fn refresh(&mut self) -> Result<(), ApiError> {
        // The run first, then its steps: a checkpoint commits a step with the status it leads
        // to, so steps read after a terminal status include the last one. (Read the other way
        // round, a run that ended in between looked ended without its final steps.)
        let Some(row) = store::get(&self.state.db, self.tenant, self.run).await? else {
            self.ended = true;
            return Ok(());
        };
        let steps = store::steps(&self.state.db, self.tenant, self.run, self.next_seq).await?;
        for step in steps {
            self.next_seq = step.seq + 1;
            self.queue.push_back(RunUpdate::Step(step));
        }
        let status = row.status();
        if self.status != Some(status) {
            self.status = Some(status);
            self.queue
                .push_back(RunUpdate::Status(Box::new(RunView::from_row(&row))));
        }
        if status.is_terminal() {
            self.ended = true;
        }
        Ok(())
    }

    async fn changed(&mut self) {
        let deadline = Instant::now() + POLL;
        loop {
            match tokio::time::timeout_at(deadline, self.changes.recv()).await {
                Ok(Ok(id)) if id != self.run => {}
                // Ours, lagged (re-read to be safe), closed or timed out: re-read.
                _ => return,
            }
        }
    }
}

/// Updates of `run` from step `from_seq` on, ending after the run ends.
pub fn follow(
    state: AppState,
    tenant: TenantId,
    run: Uuid,
    from_seq: u32,
) -> impl Stream<Item = Result<RunUpdate, ApiError>> + Send {
    let changes = state.runs.subscribe();
    let follower = Follower {
        state,
        tenant,
        run,
        changes,
        next_seq: from_seq,
        status: None,
        queue: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(Some(follower), |follower| async move {
        let mut f = follower?;
        loop {
            if let Some(update) = f.queue.pop_front() {
                return Some((Ok(update), Some(f)));
            }
            if f.ended {
                return None;
            }
            if f.status.is_some() {
                f.changed().await;
            }
            if let Err(e) = f.refresh().await {
                return Some((Err(e), None));
            }
        }
    })
}

/// Waits until the run ends or pauses, at most `timeout`; returns the run as it is then.
pub async fn settle(
    state: &AppState,
    tenant: TenantId,
    run: Uuid,
    timeout: Duration,
) -> Result<RunRow, ApiError> {
    let mut changes = state.runs.subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        let row = store::get(&state.db, tenant, run)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run {run}")))?;
        let status = row.status();
        if status.is_terminal() || status == RunStatus::Waiting || Instant::now() >= deadline {
            return Ok(row);
        }
        let poll = (Instant::now() + Duration::from_millis(250)).min(deadline);
        loop {
            match tokio::time::timeout_at(poll, changes.recv()).await {
                Ok(Ok(id)) if id != run => {}
                _ => break,
            }
        }
    }
}
