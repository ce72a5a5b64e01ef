//! Leader election on a `coordination.k8s.io/v1` Lease, through `kube-lease-manager` (built on
//! kube 5; `kube-leader-election` still depends on kube 4). Only the leader runs controllers;
//! a leader that loses the Lease stops, and the process exits so that it never reconciles
//! beside a new leader.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Verbs the lease manager uses on `coordination.k8s.io` Leases.
pub const LEASE_PERMISSIONS: &[&str] = &["get", "create", "patch"];

/// Why leadership could not be taken or kept.
#[derive(Debug, Error)]
pub enum LeaderError {
    /// Durations that cannot work.
    #[error(
        "lease duration ({duration}s) and grace ({grace}s) must be positive, grace shorter than duration"
    )]
    Durations {
        /// Lease duration.
        duration: u64,
        /// Renewal grace.
        grace: u64,
    },
    /// The Lease could not be read or created.
    #[error("leader lease: {0}")]
    Lease(#[from] LeaseManagerError),
    /// The lease manager stopped while this process waited for leadership.
    #[error("the lease manager stopped before this process became the leader")]
    Stopped,
}

/// Where the Lease is and how long it lasts.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's).
    pub namespace: String,
    /// This process's identity (the pod name).
    pub identity: String,
    /// Seconds a holder keeps the Lease without renewing.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

/// Held leadership.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Waits until this process holds the Lease; `None` when `shutdown` came first.
pub async fn acquire(
    client: Client,
    settings: &LeaseSettings,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>, LeaderError> {
    let (duration, grace) = (settings.duration_seconds, settings.grace_seconds);
    if duration == 0 || grace == 0 || grace >= duration {
        return Err(LeaderError::Durations { duration, grace });
    }
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    loop {
        if *state.borrow_and_update() {
            tracing::info!(identity = %settings.identity, lease = %settings.name, "became the leader");
            return Ok(Some(Leadership { state, task }));
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() {
                return Err(LeaderError::Stopped);
            },
            () = shutdown.cancelled() => {
                drop(state);
                let _ = task.await;
                return Ok(None);
            }
        }
    }
}

impl Leadership {
    /// Resolves when the Lease is lost (another holder, or the manager stopped).
    pub async fn lost(&mut self) {
        loop {
            if !*self.state.borrow_and_update() {
                return;
            }
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives the Lease up so that a standby takes over at once instead of after expiry.
    pub async fn release(self) {
        // Closing the channel makes the manager release the Lease and finish.
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease"),
            Err(e) => tracing::warn!(error = %e, "the lease manager task failed"),
        }
    }
}
