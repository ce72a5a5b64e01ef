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
    /// Defaults, with the Secrets directory from `AGENTRY_PROVIDER_SECRETS_DIR` and the
    /// retry and breaker settings from `AGENTRY_LLM_*` when set (see [`Self::with_env`]).
    pub fn from_env(dev_mode: bool) -> Self {
        let config = Self {
            dev_mode,
            ..Self::default()
        };
        config.with_env(&|name| std::env::var(name).ok())
    }

    /// Overrides from the environment, read through `env`:
    ///
    /// | variable | field |
    /// | --- | --- |
    /// | `AGENTRY_PROVIDER_SECRETS_DIR` | `secrets_dir` |
    /// | `AGENTRY_LLM_RETRY_MAX_ATTEMPTS` | `retry.max_attempts` (at least 1) |
    /// | `AGENTRY_LLM_RETRY_INITIAL_BACKOFF_MS` | `retry.initial_backoff` |
    /// | `AGENTRY_LLM_RETRY_MAX_BACKOFF_MS` | `retry.max_backoff` |
    /// | `AGENTRY_LLM_BREAKER_FAILURE_THRESHOLD` | `breaker.failure_threshold` (at least 1) |
    /// | `AGENTRY_LLM_BREAKER_OPEN_MS` | `breaker.open_for` |
    ///
    /// A value that is not a whole number is ignored with a warning (the default stays).
    pub fn with_env(mut self, env: &dyn Fn(&str) -> Option<String>) -> Self {
        if let Some(dir) = env(secrets::SECRETS_DIR_ENV).filter(|d| !d.is_empty()) {
            self.secrets_dir = PathBuf::from(dir);
        }
        let number = |name: &str| -> Option<u64> {
            let value = env(name)?;
            let parsed = value.trim().parse::<u64>();
            if parsed.is_err() {
                tracing::warn!(variable = name, value, "not a whole number; ignored");
            }
            parsed.ok()
        };
        let count = |name: &str| number(name).map(|n| u32::try_from(n.max(1)).unwrap_or(u32::MAX));
        if let Some(n) = count("AGENTRY_LLM_RETRY_MAX_ATTEMPTS") {
            self.retry.max_attempts = n;
        }
        if let Some(ms) = number("AGENTRY_LLM_RETRY_INITIAL_BACKOFF_MS") {
            self.retry.initial_backoff = Duration::from_millis(ms);
        }
        if let Some(ms) = number("AGENTRY_LLM_RETRY_MAX_BACKOFF_MS") {
            self.retry.max_backoff = Duration::from_millis(ms);
        }
        if let Some(n) = count("AGENTRY_LLM_BREAKER_FAILURE_THRESHOLD") {
            self.breaker.failure_threshold = n;
        }
        if let Some(ms) = number("AGENTRY_LLM_BREAKER_OPEN_MS") {
            self.breaker.open_for = Duration::from_millis(ms);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_retry_and_breaker_settings() {
        let env = |name: &str| match name {
            "AGENTRY_LLM_RETRY_MAX_ATTEMPTS" => Some("0".to_owned()),
            "AGENTRY_LLM_RETRY_INITIAL_BACKOFF_MS" => Some(" 20 ".to_owned()),
            "AGENTRY_LLM_BREAKER_FAILURE_THRESHOLD" => Some("3".to_owned()),
            "AGENTRY_LLM_BREAKER_OPEN_MS" => Some("1500".to_owned()),
            "AGENTRY_LLM_RETRY_MAX_BACKOFF_MS" => Some("soon".to_owned()),
            _ => None,
        };
        let config = LlmConfig::default().with_env(&env);
        assert_eq!(config.retry.max_attempts, 1);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(20));
        assert_eq!(config.retry.max_backoff, RetryPolicy::default().max_backoff);
        assert_eq!(config.breaker.failure_threshold, 3);
        assert_eq!(config.breaker.open_for, Duration::from_millis(1500));
        assert_eq!(config.secrets_dir, LlmConfig::default().secrets_dir);
    }
}
