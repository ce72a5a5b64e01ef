//! In-process signals between the API, the workers and event streams: "run X changed" (for
//! SSE and WebSocket subscribers, who then read the new steps from the database) and "there
//! is work" (a run was created or decided here, so the local worker claims it at once
//! instead of at its next poll). Replicas do not share these signals; subscribers and
//! workers also poll, so a run driven by another replica is seen within the poll interval.

use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

/// Settings of the orchestrator's workers.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Runs one replica drives at once.
    pub concurrency: usize,
    /// How long a claimed run stays leased without a heartbeat.
    pub lease: Duration,
    /// How often the worker looks for runnable runs when nothing woke it.
    pub poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            lease: Duration::from_secs(15),
            poll: Duration::from_millis(500),
        }
    }
}

/// The orchestrator's shared signals and settings.
#[derive(Debug)]
pub struct RunHub {
    changed: broadcast::Sender<Uuid>,
    work: Notify,
    /// Worker settings.
    pub config: WorkerConfig,
    /// This process's lease owner id.
    pub owner: Uuid,
}

impl Default for RunHub {
    fn default() -> Self {
        Self::new(WorkerConfig::default())
    }
}

impl RunHub {
    /// A hub with `config`.
    pub fn new(config: WorkerConfig) -> Self {
        let (changed, _) = broadcast::channel(1024);
        Self {
            changed,
            work: Notify::new(),
            config,
            owner: Uuid::new_v4(),
        }
    }

    /// Tells subscribers that `run` has new steps or a new status.
    pub fn changed(&self, run: Uuid) {
        let _ = self.changed.send(run);
    }

    /// Ids of runs as they change (a lagging receiver re-reads; nothing is lost in the database).
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.changed.subscribe()
    }

    /// Wakes the local worker.
    pub fn wake(&self) {
        self.work.notify_one();
    }

    /// Waits until [`RunHub::wake`] is called (or was called since the last wait).
    pub async fn woken(&self) {
        self.work.notified().await;
    }
}
