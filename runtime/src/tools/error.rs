//! Why a tool call failed, in words fit to show the model.

use super::ssrf::EgressError;

/// A failed tool call. The `Display` text is written for the model (it goes back as the tool
/// result so the model can correct its arguments or try something else) and never contains a
/// secret; [`ToolError::code`] is stable for programs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The arguments do not match the tool's input schema.
    #[error("invalid arguments: {details}")]
    InvalidArguments {
        /// The first problems, each naming the JSON path of the bad value.
        details: String,
    },
    /// The URL or an address it resolves to is not allowed.
    #[error("the request was refused: {0}")]
    EgressDenied(#[from] EgressError),
    /// The circuit breaker is open.
    #[error(
        "the tool is unavailable after repeated failures; it will be tried again in about {retry_after_secs} s"
    )]
    CircuitOpen {
        /// Seconds until a trial call is allowed.
        retry_after_secs: u64,
    },
    /// The bulkhead is full.
    #[error("the tool is busy (too many calls in flight); try again shortly")]
    Overloaded,
    /// One attempt took longer than the tool's timeout.
    #[error("the tool did not answer within {after_ms} ms")]
    Timeout {
        /// The timeout that expired.
        after_ms: u64,
    },
    /// The caller's deadline passed.
    #[error("the time allowed for this call ran out")]
    DeadlineExceeded,
    /// The connection failed or broke.
    #[error("the tool could not be reached: {message}")]
    Unavailable {
        /// What the transport reported (no URL, no headers).
        message: String,
    },
    /// The endpoint answered with an error status.
    #[error("the tool answered HTTP {status}{}", snippet(body))]
    HttpStatus {
        /// HTTP status.
        status: u16,
        /// The start of the response body, secrets removed.
        body: String,
    },
    /// `responsePath` selects nothing.
    #[error("the tool's response has no value at {path}")]
    ResponsePathMissing {
        /// The JSON Pointer.
        path: String,
    },
    /// The response could not be used.
    #[error("the tool's response could not be used: {message}")]
    InvalidResponse {
        /// Why.
        message: String,
    },
    /// Too many redirects.
    #[error("the tool redirected more than {max} times")]
    TooManyRedirects {
        /// The limit.
        max: usize,
    },
    /// The tool ran and reported a failure (MCP `isError`).
    #[error("the tool reported an error: {message}")]
    ToolFailed {
        /// The tool's own message.
        message: String,
    },
    /// The MCP server answered with a JSON-RPC error.
    #[error("the MCP server refused the request: {message} (JSON-RPC code {code})")]
    Mcp {
        /// JSON-RPC error code.
        code: i64,
        /// JSON-RPC error message.
        message: String,
    },
    /// The tool's configuration cannot work (missing Secret, bad template, bad schema).
    #[error("the tool is misconfigured: {message}")]
    Misconfigured {
        /// What is wrong.
        message: String,
    },
}

fn snippet(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl ToolError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArguments { .. } => "invalid_arguments",
            Self::EgressDenied(_) => "egress_denied",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Overloaded => "overloaded",
            Self::Timeout { .. } => "timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Unavailable { .. } => "unavailable",
            Self::HttpStatus { .. } => "http_status",
            Self::ResponsePathMissing { .. } => "response_path_missing",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::TooManyRedirects { .. } => "too_many_redirects",
            Self::ToolFailed { .. } => "tool_failed",
            Self::Mcp { .. } => "mcp_error",
            Self::Misconfigured { .. } => "misconfigured",
        }
    }

    /// `{"error": {"code", "message"}}`, the shape the model (and the API) sees.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}})
    }

    pub(crate) fn misconfigured(message: impl Into<String>) -> Self {
        Self::Misconfigured {
            message: message.into(),
        }
    }

    pub(crate) fn invalid_response(message: impl Into<String>) -> Self {
        Self::InvalidResponse {
            message: message.into(),
        }
    }
}

/// Replaces every occurrence of a secret value with `[redacted]`, for text that came back from
/// an upstream (an endpoint that echoes request headers must not leak them to the model).
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// Recursively scrubs every string in a JSON value.
pub(crate) fn scrub_json(value: &mut serde_json::Value, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    match value {
        serde_json::Value::String(s) => *s = scrub(s, secrets),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| scrub_json(v, secrets)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| scrub_json(v, secrets)),
        _ => {}
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_secrets_and_truncate_keeps_characters_whole() {
        let secrets = vec!["tok-123456".to_owned(), "ab".to_owned()];
        assert_eq!(scrub("auth tok-123456 ab", &secrets), "auth [redacted] ab");
        let mut v = serde_json::json!({"h": {"a": ["Bearer tok-123456"]}});
        scrub_json(&mut v, &secrets);
        assert_eq!(v, serde_json::json!({"h": {"a": ["Bearer [redacted]"]}}));
        assert_eq!(truncate("héllo", 2), ("h", true));
        assert_eq!(truncate("hi", 2), ("hi", false));
    }

    #[test]
    fn codes_and_messages() {
        let e = ToolError::HttpStatus {
            status: 503,
            body: "down".into(),
        };
        assert_eq!(e.code(), "http_status");
        assert_eq!(e.to_string(), "the tool answered HTTP 503: down");
        assert_eq!(e.to_json()["error"]["code"], "http_status");
    }
}
