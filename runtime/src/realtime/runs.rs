//! `subscribe` on `/ws/chat`: a workflow run's steps and status changes, pushed into the
//! connection's queue under the same slow-consumer policy as chat turns.

use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RealtimeConfig;
use super::protocol::run_event;
use crate::gateway::{Caller, Scope};
use crate::orchestrator::follow::{self, RunUpdate};
use crate::state::AppState;

/// Follows `run` until it ends, the client unsubscribes, or the client falls behind.
pub(super) async fn follow(
    state: AppState,
    caller: Caller,
    run: Uuid,
    out: mpsc::Sender<String>,
    config: RealtimeConfig,
    slow: CancellationToken,
) {
    let send = |text: String| async {
        if timeout(config.slow_consumer_timeout, out.send(text))
            .await
            .is_err()
        {
            slow.cancel();
            return false;
        }
        true
    };
    if let Err(e) = caller.require(Scope::Workflows) {
        send(run_event(
            "run_error",
            run,
            json!({"code": e.code, "message": e.message}),
        ))
        .await;
        return;
    }
    if let Err(e) = crate::orchestrator::api::visible_run(&state, &caller, run).await {
        send(run_event(
            "run_error",
            run,
            json!({"code": e.code, "message": e.message}),
        ))
        .await;
        return;
    }
    let updates = follow::follow(state, caller.tenant.id, run, 0);
    futures::pin_mut!(updates);
    while let Some(update) = updates.next().await {
        let text = match update {
            Ok(RunUpdate::Step(step)) => run_event("run_step", run, json!({"step": step})),
            Ok(RunUpdate::Status(view)) => run_event("run_status", run, json!({"run": view})),
            Err(e) => run_event(
                "run_error",
                run,
                json!({"code": e.code, "message": e.message}),
            ),
        };
        if !send(text).await {
            return;
        }
    }
}
