//! Model providers behind one trait, and the gateway every model call goes through.
//!
//! - [`types`]: messages, tools, requests, completions, stream events.
//! - [`Provider`]: the trait; [`OpenAiProvider`] (OpenAI-compatible HTTP) and
//!   [`OfflineProvider`] (built-in, deterministic, no network) implement it.
//! - [`LlmGateway`]: resolves a tenant's catalog models to providers, retries with backoff and
//!   jitter, falls back to the next model, keeps a circuit breaker per (tenant, provider), and
//!   prices every call; [`LlmStream`] meters streams however they end.
//!
//! `docs/llm.md` is the user-facing description.

pub mod cost;
mod error;
mod gateway;
pub mod offline;
mod openai;
mod provider;
pub mod resilience;
pub mod secrets;
mod sse;
mod stream;
pub mod types;

use std::path::PathBuf;
use std::time::Duration;

pub use cost::{Prices, SharedUsageSink, UsageOutcome, UsageRecord, UsageSink};
pub use error::LlmError;
pub use gateway::{EnvLookup, LlmGateway};
pub use offline::OfflineProvider;
pub use openai::OpenAiProvider;
pub use provider::{ChunkStream, Provider, ProviderChunk, ProviderReply};
pub use resilience::{BreakerPolicy, CircuitState, Clock, ManualClock, RetryPolicy, SystemClock};
pub use stream::LlmStream;
pub use types::{
    ChatRequest, Completion, FinishReason, Message, Role, StreamEvent, ToolCall, ToolDefinition,
    Usage,
};

/// Settings of the [`LlmGateway`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmConfig {
    /// Retries of one model.
    pub retry: RetryPolicy,
    /// Circuit breaker of each (tenant, provider).
    pub breaker: BreakerPolicy,
    /// Where provider Secrets are mounted: `<dir>/<secret name>/<key>`.
    pub secrets_dir: PathBuf,
    /// How often a key file is checked for rotation (`stat`, at most once per interval).
    pub key_recheck: Duration,
    /// Longest stream.
    pub max_stream: Duration,
    /// Dev mode: keys may come from `AGENTRY_PROVIDER_<NAME>_API_KEY`.
    pub dev_mode: bool,
    /// Seed of the backoff jitter (tests); drawn from the OS when `None`.
    pub jitter_seed: Option<u64>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            secrets_dir: PathBuf::from(secrets::DEFAULT_SECRETS_DIR),
            key_recheck: Duration::from_secs(1),
            max_stream: Duration::from_secs(600),
            dev_mode: false,
            jitter_seed: None,
        }
    }
}

impl LlmConfig {
    /// Defaults, with the Secrets directory from `AGENTRY_PROVIDER_SECRETS_DIR` when set.
    pub fn from_env(dev_mode: bool) -> Self {
        let mut config = Self {
            dev_mode,
            ..Self::default()
        };
        if let Some(dir) = std::env::var_os(secrets::SECRETS_DIR_ENV).filter(|d| !d.is_empty()) {
            config.secrets_dir = PathBuf::from(dir);
        }
        config
    }
}
