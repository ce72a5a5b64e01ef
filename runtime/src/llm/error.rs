//! Errors of model calls. Every message is safe to log and to show an operator: API keys are
//! never part of one (upstream bodies are redacted and truncated, URLs are stripped).

use std::time::Duration;

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// 429: the provider asks us to slow down.
    #[error("{provider} rate limited the request: {message}")]
    RateLimited {
        /// Provider name.
        provider: String,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// Upstream message.
        message: String,
    },
    /// The provider answered an error status.
    #[error("{provider} answered {status}: {message}")]
    Status {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// Upstream message.
        message: String,
    },
    /// No answer (or no next chunk) within the provider's timeout.
    #[error("{provider} timed out after {timeout_ms} ms")]
    Timeout {
        /// Provider name.
        provider: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The connection failed or broke.
    #[error("cannot reach {provider}: {message}")]
    Connect {
        /// Provider name.
        provider: String,
        /// Cause.
        message: String,
    },
    /// The provider answered something we cannot read.
    #[error("bad response from {provider}: {message}")]
    BadResponse {
        /// Provider name.
        provider: String,
        /// What was wrong.
        message: String,
    },
    /// The provider's circuit breaker is open: it was not called.
    #[error("circuit open for provider {provider}")]
    CircuitOpen {
        /// Provider name.
        provider: String,
    },
    /// The model is not in the tenant's catalog.
    #[error("model {0:?} is not in the tenant's catalog")]
    UnknownModel(String),
    /// The provider cannot be used as configured (missing base URL, unreadable key).
    #[error("provider {provider} is misconfigured: {message}")]
    Config {
        /// Provider name.
        provider: String,
        /// What is wrong.
        message: String,
    },
    /// No model was given.
    #[error("no model to call")]
    NoModel,
    /// Every model (primary and fallbacks) failed; `last` is the final error.
    #[error("all models failed after {attempts} attempt(s); last error: {last}")]
    Exhausted {
        /// Upstream calls made.
        attempts: u32,
        /// The last error.
        last: Box<LlmError>,
    },
}

impl LlmError {
    /// Worth retrying on the same model: 408/429/5xx, timeouts and connection failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::RateLimited { .. } | LlmError::Timeout { .. } | LlmError::Connect { .. } => {
                true
            }
            LlmError::Status { status, .. } => *status == 408 || *status >= 500,
            _ => false,
        }
    }

    /// Counts against the provider's circuit breaker: the provider itself looks unhealthy.
    /// A 429 does not (the provider is healthy, we are over quota) and neither does a 4xx (the
    /// request is at fault) or a configuration error (nothing was sent).
    pub fn is_provider_failure(&self) -> bool {
        match self {
            LlmError::Timeout { .. } | LlmError::Connect { .. } | LlmError::BadResponse { .. } => {
                true
            }
            LlmError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The provider's `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error behind an [`LlmError::Exhausted`] (itself otherwise).
    pub fn root(&self) -> &LlmError {
        match self {
            LlmError::Exhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// A stable machine-readable code for API errors and metrics.
    pub fn code(&self) -> &'static str {
        match self.root() {
            LlmError::RateLimited { .. } => "upstream_rate_limited",
            LlmError::Status { status, .. } if *status >= 500 => "upstream_error",
            LlmError::Status { .. } => "upstream_rejected",
            LlmError::Timeout { .. } => "upstream_timeout",
            LlmError::Connect { .. } => "upstream_unreachable",
            LlmError::BadResponse { .. } => "upstream_bad_response",
            LlmError::CircuitOpen { .. } => "upstream_circuit_open",
            LlmError::UnknownModel(_) => "unknown_model",
            LlmError::Config { .. } => "provider_misconfigured",
            LlmError::NoModel | LlmError::Exhausted { .. } => "no_model",
        }
    }
}

/// Shortens an upstream error body to something fit for a log line, and removes `secret`
/// wherever it appears (some providers echo part of a bad key back).
pub(crate) fn sanitize(body: &str, secret: Option<&str>) -> String {
    // OpenAI-style bodies carry the useful part in error.message.
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.to_owned());
    let mut text = match secret {
        Some(secret) if secret.len() >= 4 => text.replace(secret, "[redacted]"),
        _ => text,
    };
    const MAX: usize = 300;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let status = |status| LlmError::Status {
            provider: "p".into(),
            status,
            message: String::new(),
        };
        assert!(status(500).is_retryable() && status(500).is_provider_failure());
        assert!(status(408).is_retryable() && !status(408).is_provider_failure());
        assert!(!status(400).is_retryable() && !status(401).is_provider_failure());
        let limited = LlmError::RateLimited {
            provider: "p".into(),
            retry_after: None,
            message: String::new(),
        };
        assert!(limited.is_retryable() && !limited.is_provider_failure());
    }

    #[test]
    fn sanitize_redacts_and_truncates() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-secret-123"}}"#;
        assert_eq!(
            sanitize(body, Some("sk-secret-123")),
            "Incorrect API key provided: [redacted]"
        );
        let long = "é".repeat(400);
        let out = sanitize(&long, None);
        assert!(out.len() <= 304 && out.ends_with('…'));
    }
}
