//! Shared state of the HTTP server and background tasks.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::billing::{Budgets, UsageWriter};
use crate::bundles::TenantRegistry;
use crate::db::Db;
use crate::gateway::auth::Authenticator;
use crate::gateway::limits::Limiter;
use crate::llm::LlmGateway;
use crate::metrics::Metrics;
use crate::tools::{SecretSource, ToolRuntime};

/// Everything handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// Database access as the runtime's role.
    pub db: Db,
    /// Tenants served and their bundles.
    pub tenants: Arc<TenantRegistry>,
    /// Authentication.
    pub auth: Authenticator,
    /// Rate limits.
    pub limiter: Limiter,
    /// Budgets.
    pub budgets: Arc<Budgets>,
    /// Usage records of catalog-model calls, written in batches off the request path.
    pub usage: UsageWriter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// NATS connection (events, realtime fan-out).
    pub nats: Option<async_nats::Client>,
    /// Outgoing HTTP (JWKS, providers, tools).
    pub http: reqwest::Client,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Model calls.
    pub llm: Arc<LlmGateway>,
    /// Tool calls.
    pub tools: Arc<ToolRuntime>,
    /// Where tool header Secrets come from.
    pub tool_secrets: Arc<dyn SecretSource>,
    /// Serving several tenants from a folder (dev mode).
    pub dev_mode: bool,
    /// Workflow runs: worker settings and change signals.
    pub runs: Arc<crate::orchestrator::RunHub>,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
