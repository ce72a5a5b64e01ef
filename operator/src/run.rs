//! `agentry-operator run`: settings, clients, the health and metrics server, leader election,
//! and the controllers until a signal (graceful) or a lost Lease (exit with an error).

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube::runtime::events::Reporter;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::controller::{self, Context};
use crate::database::PgProvisioner;
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::server::{self, Health, ServerState};
use crate::settings::Settings;

/// Runs the operator.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    // One TLS provider for the Kubernetes client and PostgreSQL, whatever else the
    // dependency graph enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("agentry-operator-{}", uuid::Uuid::new_v4().simple()));
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding --metrics-address {}", args.metrics_address))?;
    let server = tokio::spawn(server::serve(
        listener,
        ServerState {
            health: health.clone(),
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));

    let client = Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster config or kubeconfig)")?;
    // In a cluster the client's default namespace is the pod's own.
    let operator_namespace = args
        .operator_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let settings = Settings::from_args(&args, &operator_namespace)?;
    let admin = PgConnectOptions::from_str(&args.database_url)
        .context("--database-url is not a PostgreSQL URL")?
        .application_name("agentry-operator");
    // Lazy: the operator starts (and reports DatabaseReady=False on its Tenants) while
    // PostgreSQL is down, instead of crash-looping.
    let pool = PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(admin);
    let reporter = Reporter {
        controller: "agentry-operator".to_owned(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            settings,
            Arc::new(PgProvisioner::new(pool)),
            metrics.clone(),
            reporter,
        )
        .with_resync(Duration::from_secs(args.resync_seconds.max(10))),
    );
    health.started.store(true, Ordering::Relaxed);

    let outcome = if args.leader_election {
        let lease = LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or(operator_namespace),
            identity,
            duration_seconds: args.lease_duration_seconds,
            grace_seconds: args.lease_grace_seconds,
        };
        lead(client, &lease, ctx, &args, &health, &metrics, &shutdown).await
    } else {
        set_leader(&health, &metrics, true);
        controller::run(ctx, args.concurrency, stopped(shutdown.clone())).await;
        Ok(())
    };
    set_leader(&health, &metrics, false);
    shutdown.cancel();
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "the health server failed");
    }
    outcome
}

/// Waits for the Lease, runs the controllers while holding it, and fails when it is lost.
async fn lead(
    client: Client,
    lease: &LeaseSettings,
    ctx: Arc<Context>,
    args: &RunArgs,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(identity = %lease.identity, lease = %lease.name, "waiting to become the leader");
    let Some(mut leadership) = leader::acquire(client, lease, shutdown).await? else {
        return Ok(());
    };
    set_leader(health, metrics, true);
    let controllers = controller::run(ctx, args.concurrency, stopped(shutdown.clone()));
    tokio::select! {
        () = controllers => {
            leadership.release().await;
            Ok(())
        }
        () = leadership.lost() => {
            // Dropping the controllers cancels reconciles in flight: a new leader may already
            // be reconciling, and two writers must never overlap.
            anyhow::bail!("lost the leader lease {}; exiting so that only the new leader reconciles", lease.name)
        }
    }
}

fn set_leader(health: &Health, metrics: &Metrics, leader: bool) {
    health.leader.store(leader, Ordering::Relaxed);
    metrics.leader.set(i64::from(leader));
}

async fn stopped(token: CancellationToken) {
    token.cancelled().await;
}

/// Cancels `token` on SIGTERM or Ctrl-C.
async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing reconciles in flight");
    token.cancel();
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.compact().try_init()
    };
}
