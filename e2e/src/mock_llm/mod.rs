//! A mock OpenAI-compatible upstream on loopback, for tests and benchmarks.
//!
//! `POST /v1/chat/completions` (streamed or not, usage in both; a usage chunk when
//! `stream_options.include_usage`) and `GET /v1/models`. Behaviour is scripted by:
//!
//! - directives on their own lines in the last message when it is the user's:
//!   `#tool <name> <json args>` (a tool call; several lines → several calls),
//!   `#reply <text>` (the answer's text), `#fail <status>` (answer that status),
//!   `#slow <ms>` (wait before answering), `#pause <ms>` (streams: wait after the first
//!   content chunk), `#cut` (streams: abort the connection after the first content chunk),
//!   `#nousage` (report no usage, as some compatible servers do), `#burst <words> <bytes>`
//!   (the answer is `<words>` words of `<bytes>` bytes each, the space included, streamed one
//!   chunk per word as fast as the client takes them: a flood for slow-consumer tests);
//! - the model name: one containing `fail-<status>` (e.g. `gpt-fail-500`) always fails;
//! - server switches: [`MockLlm::fail_next`], [`MockLlm::fail_model`], latency, required key.
//!
//! A last message from a tool is answered `Tool result: <content>`. Anything else gets the
//! default reply, served from prebuilt bytes (the mock doubles as the benchmark upstream).
//! Usage follows the runtime's estimator: ⌈chars/4⌉ + 4 per message in, ⌈chars/4⌉ out.

mod answer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;

use answer::Answer;

/// The default answer.
pub const DEFAULT_REPLY: &str = "This is a reply from the mock model.";

/// Settings of a [`MockLlm`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Wait before every answer.
    pub latency: Duration,
    /// Wait between streamed chunks.
    pub token_latency: Duration,
    /// Models listed by `GET /v1/models`.
    pub models: Vec<String>,
    /// Bearer key required, if any.
    pub api_key: Option<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            token_latency: Duration::ZERO,
            models: vec!["mock-small".to_owned(), "mock-large".to_owned()],
            api_key: None,
        }
    }
}

struct Shared {
    latency_nanos: AtomicU64,
    token_latency_nanos: AtomicU64,
    fail_next: AtomicU64,
    fail_status: AtomicU16,
    fail_retry_after_ms: AtomicU64,
    model_failures: std::sync::RwLock<HashMap<String, u16>>,
    counts: std::sync::Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    api_key: std::sync::RwLock<Option<String>>,
    last_body: std::sync::Mutex<Option<Bytes>>,
    models: Vec<String>,
}

/// A running mock upstream; stops when dropped.
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm").field("addr", &self.addr).finish()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl MockLlm {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency_nanos: AtomicU64::new(nanos(config.latency)),
            token_latency_nanos: AtomicU64::new(nanos(config.token_latency)),
            fail_next: AtomicU64::new(0),
            fail_status: AtomicU16::new(500),
            fail_retry_after_ms: AtomicU64::new(0),
            model_failures: Default::default(),
            counts: Default::default(),
            total: AtomicU64::new(0),
            api_key: std::sync::RwLock::new(config.api_key),
            last_body: Default::default(),
            models: config.models,
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/v1`, the provider base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Chat requests received for `model`.
    pub fn requests(&self, model: &str) -> u64 {
        lock(&self.shared.counts).get(model).copied().unwrap_or(0)
    }

    /// Chat requests received in all.
    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// The body of the last chat request, parsed.
    pub fn last_request(&self) -> Option<serde_json::Value> {
        let body = lock(&self.shared.last_body).clone()?;
        serde_json::from_slice(&body).ok()
    }

    /// Fails the next `n` chat requests (any model) with `status`.
    pub fn fail_next(&self, n: u64, status: u16) {
        self.fail_next_with_retry_after(n, status, Duration::ZERO);
    }

    /// Fails the next `n` chat requests with `status` and, when non-zero, `Retry-After`
    /// (`retry-after-ms` and `retry-after` in whole seconds, rounded up).
    pub fn fail_next_with_retry_after(&self, n: u64, status: u16, retry_after: Duration) {
        self.shared.fail_status.store(status, Ordering::SeqCst);
        let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
        self.shared.fail_retry_after_ms.store(ms, Ordering::SeqCst);
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Makes every request for `model` fail with `status` (`None`: succeed again).
    pub fn fail_model(&self, model: &str, status: Option<u16>) {
        let mut failures = self
            .shared
            .model_failures
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match status {
            Some(status) => failures.insert(model.to_owned(), status),
            None => failures.remove(model),
        };
    }

    /// Changes the latency.
    pub fn set_latency(&self, fixed: Duration, per_token: Duration) {
        self.shared
            .latency_nanos
            .store(nanos(fixed), Ordering::SeqCst);
        self.shared
            .token_latency_nanos
            .store(nanos(per_token), Ordering::SeqCst);
    }

    /// Requires `Authorization: Bearer <key>` (or nothing with `None`).
    pub fn set_api_key(&self, key: Option<&str>) {
        *self
            .shared
            .api_key
            .write()
            .unwrap_or_else(|e| e.into_inner()) = key.map(str::to_owned);
    }

    /// Serves until `shutdown` completes (the binary).
    pub async fn serve_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        drop(self);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What the request asked the mock to do.
#[derive(Default)]
struct Script {
    reply: Option<String>,
    tools: Vec<(String, String)>,
    fail: Option<u16>,
    slow: Duration,
    pause: Duration,
    cut: bool,
    no_usage: bool,
    burst: Option<(usize, usize)>,
}

/// Largest `#burst` answer.
const MAX_BURST_BYTES: usize = 64 * 1024 * 1024;

impl Script {
    fn parse(text: &str) -> Self {
        let mut script = Script::default();
        for line in text.lines().map(str::trim) {
            let Some(directive) = line.strip_prefix('#') else {
                continue;
            };
            let (word, rest) = directive.split_once(' ').unwrap_or((directive, ""));
            let rest = rest.trim();
            let ms = || Duration::from_millis(rest.parse().unwrap_or(0));
            match word {
                "tool" => {
                    let (name, args) = rest.split_once(' ').unwrap_or((rest, "{}"));
                    script.tools.push((name.to_owned(), args.trim().to_owned()));
                }
                "reply" => script.reply = Some(rest.to_owned()),
                "fail" => script.fail = rest.parse().ok(),
                "slow" => script.slow = ms(),
                "pause" => script.pause = ms(),
                "nousage" => script.no_usage = true,
                "cut" => script.cut = true,
                "burst" => {
                    let mut numbers = rest.split_whitespace().map(str::parse::<usize>);
                    if let (Some(Ok(words)), Some(Ok(bytes))) = (numbers.next(), numbers.next())
                        && words.saturating_mul(bytes) <= MAX_BURST_BYTES
                    {
                        script.burst = Some((words, bytes.max(1)));
                    }
                }
                _ => {}
            }
        }
        script
    }
}

fn tokens(text: &str) -> u64 {
    u64::try_from(text.chars().count().div_ceil(4)).unwrap_or(u64::MAX)
}

fn error(status: StatusCode, message: &str, retry_after_ms: u64) -> Response {
    let body =
        json!({"error": {"message": message, "type": "mock_error", "code": status.as_u16()}});
    let mut response = (status, axum::Json(body)).into_response();
    if retry_after_ms > 0 {
        let headers = response.headers_mut();
        headers.insert("retry-after-ms", HeaderValue::from(retry_after_ms));
        headers.insert(
            "retry-after",
            HeaderValue::from(retry_after_ms.div_ceil(1000)),
        );
    }
    response
}

fn model_failure(shared: &Shared, model: &str) -> Option<u16> {
    let configured = shared
        .model_failures
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(model)
        .copied();
    configured.or_else(|| {
        let at = model.find("fail-")?;
        let digits: String = model[at + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.total.fetch_add(1, Ordering::SeqCst);
    let request: ChatBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}"), 0),
    };
    {
        let mut counts = lock(&shared.counts);
        match counts.get_mut(&request.model) {
            Some(count) => *count += 1,
            None => {
                counts.insert(request.model.clone(), 1);
            }
        }
    }
    *lock(&shared.last_body) = Some(body);
    let required = shared
        .api_key
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(key) = required {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", 0);
        }
    }
    let latency = shared.latency_nanos.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_nanos(latency)).await;
    }
    let forced = shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if forced {
        let status = shared.fail_status.load(Ordering::SeqCst);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = shared.fail_retry_after_ms.load(Ordering::SeqCst);
        return error(status, "injected failure", retry_after);
    }
    if let Some(status) = model_failure(&shared, &request.model) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "injected model failure", 0);
    }
    let last = request.messages.last();
    let last_text = last.and_then(|m| m.content.as_deref()).unwrap_or("");
    let script = match last {
        Some(m) if m.role == "user" && last_text.contains('#') => Script::parse(last_text),
        _ => Script::default(),
    };
    if let Some(status) = script.fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "scripted failure", 0);
    }
    if !script.slow.is_zero() {
        tokio::time::sleep(script.slow).await;
    }
    let prompt_tokens: u64 = request
        .messages
        .iter()
        .map(|m| tokens(m.content.as_deref().unwrap_or("")) + 4)
        .sum();
    let (content, tools): (std::borrow::Cow<'_, str>, &[(String, String)]) = match last {
        Some(m) if m.role == "tool" => (format!("Tool result: {last_text}").into(), &[]),
        _ if script.burst.is_some() => {
            let (words, bytes) = script.burst.unwrap_or_default();
            let word = "x".repeat(bytes - 1) + " ";
            (word.repeat(words).into(), &[])
        }
        _ => match (&script.reply, script.tools.is_empty()) {
            (Some(reply), _) => (reply.as_str().into(), &script.tools),
            (None, true) => (DEFAULT_REPLY.into(), &[]),
            (None, false) => ("".into(), &script.tools),
        },
    };
    let answer = Answer {
        model: &request.model,
        content: &content,
        tools,
        prompt_tokens,
        usage: !script.no_usage,
    };
    if request.stream {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        let token_latency =
            Duration::from_nanos(shared.token_latency_nanos.load(Ordering::Relaxed));
        answer.stream(include_usage, token_latency, &script)
    } else {
        answer.json()
    }
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let data: Vec<_> = shared
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "mock"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        let script = Script::parse("hi\n#tool lookup {\"id\": 1}\n#tool now\n#slow 20\n#fail 503");
        assert_eq!(
            script.tools,
            [
                ("lookup".to_owned(), "{\"id\": 1}".to_owned()),
                ("now".to_owned(), "{}".to_owned())
            ]
        );
        assert_eq!(script.slow, Duration::from_millis(20));
        assert_eq!(script.fail, Some(503));
        assert_eq!(Script::parse("#burst 10 4").burst, Some((10, 4)));
        assert_eq!(Script::parse("#burst 100000 100000").burst, None);
    }
}
