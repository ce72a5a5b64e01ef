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
pub mod realtime;
pub mod resilience;
pub mod schema;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod tenancy;
pub mod tools;

use cli::{Cli, Command};

/// Runs one subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Migrate(args) => serve::migrate(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Dev(args) => dev::run(args).await,
    }
}
