//! Process lifecycle shared by `serve` and `dev`: connections, background tasks, the HTTP
//! server, and a graceful shutdown that drains requests and flushes buffers.

use std::future::{Future, IntoFuture as _};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::serve::ListenerExt as _;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::billing::{Budgets, UsageWriter};
use crate::bundles::{FileSource, TenantRegistry};
use crate::cli::{CommonArgs, MigrateArgs, ServeArgs};
use crate::db::{Db, RoleMode};
use crate::gateway::auth::Authenticator;
use crate::gateway::limits::Limiter;
use crate::http::{self, HttpConfig};
use crate::llm::{LlmConfig, LlmGateway};
use crate::metrics::Metrics;
use crate::priority::BackgroundThread;
use crate::state::{AppState, Shared};
use crate::tools::{
    ChainedSecrets, EnvSecrets, MountedSecrets, SecretSource, ToolRuntime, ToolSettings,
};

/// `agentry-runtime migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to the database")?;
    crate::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    println!("migrations applied");
    Ok(())
}

/// `agentry-runtime serve`: one tenant, from its role and its bundle file.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init("agentry-runtime", args.common.log_json);
    let db = Db::connect(&args.database_url, args.common.db_max_connections).await?;
    let RoleMode::Tenant(tenant) = db.mode() else {
        bail!(
            "database role {:?} is a shared (dev mode) role; `serve` needs a tenant role",
            db.role()
        );
    };
    let mut tx = db.begin(tenant).await?;
    let name: String = sqlx::query_scalar("select name from agentry.tenants where id = $1")
        .bind(tenant.0)
        .fetch_one(&mut *tx)
        .await
        .context("reading the tenant of the database role")?;
    tx.commit().await?;
    let registry = Arc::new(TenantRegistry::new(args.bundle.display().to_string()));
    let source = FileSource::open(args.bundle.clone(), tenant, &name, &registry)
        .map_err(anyhow::Error::msg)?;
    let mut runtime = Runtime::start(db, registry, &args.common, false).await?;
    let (registry, metrics, shutdown) = (
        runtime.state.tenants.clone(),
        runtime.state.metrics.clone(),
        runtime.state.shutdown.clone(),
    );
    runtime
        .tasks
        .spawn(source.watch(registry, metrics, shutdown));
    let listener = bind(&args.common)?;
    runtime.serve(listener, &args.common).await
}

/// Connections the kernel keeps waiting for `accept` (capped by `net.core.somaxconn`). Past
/// capacity the one busy worker accepts late, and a client opening connections in a burst
/// overflowed tokio's default of 1,024: the dropped connection attempts were retried by the
/// client's kernel a second later, a request taking over a second (docs/benchmarks.md).
const LISTEN_BACKLOG: u32 = 4096;

/// Connections of the background thread's pool: the usage writes in flight (two), the relay's
/// batch and its `LISTEN`, and one to spare.
const BACKGROUND_CONNECTIONS: u32 = 5;

/// Binds the listening socket (port 0 picks a free port; the log says which).
pub fn bind(common: &CommonArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let listen = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = if common.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted process can bind while old connections of
        // its predecessor linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(common.listen)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let listener = listen().with_context(|| format!("listening on {}", common.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving");
    Ok(listener)
}

/// A started runtime: state and background tasks, before the HTTP server runs.
#[derive(Debug)]
pub struct Runtime {
    /// Shared state.
    pub state: AppState,
    /// Background tasks, stopped by the shutdown token.
    pub tasks: JoinSet<()>,
    /// The thread the usage writer and the relay run on, when `--background-thread` is on;
    /// dropped (stopped) after them.
    background: Option<BackgroundThread>,
}

/// Connects NATS from a task on `on` (in the background: the outbox keeps events while NATS
/// is away). The client's connection task, which writes every publish to the socket and hands
/// out every acknowledgement, runs on the runtime that connects, and the outbox relay is the
/// only publisher: so with the background thread the client lives there with the relay, and a
/// publish never wakes the request path's workers (it did once per event while the client lived
/// on the workers' runtime: docs/benchmarks.md).
pub async fn connect_nats(
    url: &str,
    on: &tokio::runtime::Handle,
) -> anyhow::Result<async_nats::Client> {
    let url = url.to_owned();
    on.spawn(async move {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .name("agentry-runtime")
            .connect(url.as_str())
            .await
            .with_context(|| format!("NATS URL {url:?}"))
    })
    .await
    .context("connecting NATS")?
}

impl Runtime {
    /// Connects NATS ([`connect_nats`]) and builds the state and background tasks.
    pub async fn start(
        db: Db,
        tenants: Arc<TenantRegistry>,
        common: &CommonArgs,
        dev_mode: bool,
    ) -> anyhow::Result<Self> {
        let shutdown = shutdown_signal();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let replica = common.replica_id.clone().unwrap_or_else(default_replica_id);
        let metrics = Arc::new(Metrics::new());
        let budgets = Arc::new(Budgets::new(db.clone(), replica));
        let background = if common.background_thread {
            // Below the workers, which are themselves below this thread with the front thread.
            let below = if common.http_front_thread {
                common.worker_nice.saturating_add(common.background_nice)
            } else {
                common.background_nice
            };
            Some(BackgroundThread::spawn(below).context("starting the background thread")?)
        } else {
            None
        };
        let (batch_db, on_background) = match &background {
            Some(thread) => (db.sibling(BACKGROUND_CONNECTIONS), thread.handle().clone()),
            None => (db.clone(), tokio::runtime::Handle::current()),
        };
        let nats = connect_nats(&common.nats_url, &on_background).await?;
        let usage = UsageWriter::spawn_on(
            batch_db.clone(),
            common.usage_config(),
            &on_background,
            Some(&metrics),
        );
        let llm = Arc::new(
            LlmGateway::new(http.clone(), LlmConfig::from_env(dev_mode))
                .with_metrics(metrics.clone()),
        );
        let tools = Arc::new(ToolRuntime::new(ToolSettings::default(), metrics.clone()));
        // Dev mode also reads tool Secrets from `AGENTRY_SECRET_<NAME>_<KEY>`.
        let tool_secrets: Arc<dyn SecretSource> = if dev_mode {
            Arc::new(ChainedSecrets(vec![
                Arc::new(EnvSecrets),
                Arc::new(MountedSecrets::from_env()),
            ]))
        } else {
            Arc::new(MountedSecrets::from_env())
        };
        let state = AppState::new(Shared {
            auth: Authenticator::new(db.clone(), http.clone()),
            limiter: Limiter::new(common.rate_limit_shards),
            budgets,
            usage,
            metrics,
            llm,
            tools,
            tool_secrets,
            nats: Some(nats.clone()),
            http,
            tenants,
            db,
            shutdown,
            dev_mode,
            runs: Arc::new(crate::orchestrator::RunHub::new(
                crate::orchestrator::hub::WorkerConfig {
                    concurrency: common.workflow_concurrency.max(1),
                    lease: Duration::from_secs(common.workflow_lease_seconds.max(3)),
                    ..Default::default()
                },
            )),
        });
        let mut tasks = JoinSet::new();
        let relay = crate::events::Relay::new(
            batch_db,
            async_nats::jetstream::new(nats),
            state.tenants.clone(),
            state.metrics.clone(),
        );
        tasks.spawn_on(relay.run(state.shutdown.clone()), &on_background);
        tasks.spawn(state.budgets.clone().run(state.shutdown.clone()));
        tasks.spawn(crate::orchestrator::worker::run(state.clone()));
        Ok(Self {
            state,
            tasks,
            background,
        })
    }

    /// Serves HTTP until shutdown, then drains requests, stops tasks and flushes buffers.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        common: &CommonArgs,
    ) -> anyhow::Result<()> {
        let config = HttpConfig {
            request_timeout: Duration::from_secs(common.request_timeout_seconds),
            max_body_bytes: common.max_body_bytes,
            realtime: crate::realtime::RealtimeConfig {
                heartbeat: Duration::from_secs(common.ws_heartbeat_seconds.max(1)),
                idle_timeout: Duration::from_secs(common.ws_idle_timeout_seconds.max(1)),
                ..crate::realtime::RealtimeConfig::default()
            },
            max_in_flight: common.max_in_flight,
        };
        let shutdown = self.state.shutdown.clone();
        let server: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = if common
            .http_front_thread
        {
            // Spawned from here, the thread that runs `block_on` and not a worker thread, so it
            // keeps the process's priority while the workers run below it (`--worker-nice`).
            let front = http::front::app(&self.state, config, tokio::runtime::Handle::current());
            let done = http::front::spawn(listener.into_std()?, front, shutdown.clone())
                .context("starting the HTTP front thread")?;
            Box::pin(async move {
                done.await
                    .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP front thread stopped")))
            })
        } else {
            let listener = listener.tap_io(http::set_nodelay);
            Box::pin(
                axum::serve(listener, http::app(self.state.clone(), config))
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .into_future(),
            )
        };
        let grace = Duration::from_secs(common.shutdown_grace_seconds);
        let drained = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.context("HTTP server")?,
            () = drained => tracing::warn!("shutdown grace period over; closing remaining connections"),
        }
        shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "background task failed");
            }
        }
        // After the server: every answered request has queued its usage record by now.
        self.state.usage.close().await;
        self.state.budgets.flush().await;
        // The usage writer and the relay are done: their thread can stop.
        drop(self.background.take());
        tracing::info!("stopped");
        Ok(())
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown requested; draining");
        trigger.cancel();
    });
    token
}

fn default_replica_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("replica-{}", uuid::Uuid::new_v4()))
}
