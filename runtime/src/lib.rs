//! The Agentry runtime: serves a tenant's end users (REST, SSE, WebSocket) with isolation,
//! limits and budgets enforced, events published through a transactional outbox, and the
//! tenant's bundle hot-reloaded.

pub mod agents;
pub mod billing;
pub mod bundles;
pub mod chat;
pub mod cli;
pub mod db;
pub mod dev;
pub mod error;
pub mod events;
pub mod flags;
pub mod gateway;
pub mod http;
pub mod llm;
pub mod metrics;
pub mod orchestrator;
pub mod priority;
pub mod realtime;
pub mod resilience;
pub mod schema;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod tenancy;
pub mod tools;

use cli::{Cli, Command};

/// The async runtime a subcommand runs on. With the HTTP front thread, its worker threads run
/// `--worker-nice` levels below the front thread (docs/limits.md, "The front thread").
pub fn tokio_runtime(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(common) = cli.command.common()
        && common.http_front_thread
        && common.worker_nice > 0
    {
        let by = common.worker_nice;
        builder.on_thread_start(move || priority::lower_this_thread(by));
    }
    builder.build()
}

/// Runs one subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Migrate(args) => serve::migrate(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Dev(args) => dev::run(args).await,
    }
}
