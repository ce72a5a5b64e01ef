//! Fixtures of the tool runtime tests: loopback servers, tool builders, an MCP server.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentry_crds::bundle::{CompiledTool, ResilienceConfig};
use agentry_crds::common::{SecretKeyRef, ValueFrom};
use agentry_crds::tool::{
    BuiltinName, BuiltinTool, HttpHeader, HttpMethod, HttpTool, McpTool, ToolType,
};
use agentry_runtime::metrics::Metrics;
use agentry_runtime::tools::{MaxJitter, StaticSecrets, ToolContext, ToolRuntime, ToolSettings};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Everything logged by any test of this binary, to search for secrets. A global subscriber
/// (rather than a per-test one) because callsite interest is cached process-wide: a scoped
/// subscriber misses events whose callsites another thread registered first.
pub static LOGS: std::sync::LazyLock<LogBuffer> = std::sync::LazyLock::new(|| {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    logs
});

/// Installs the TLS provider the HTTP client needs (the binary does this in `run`) and the
/// log capture.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::sync::LazyLock::force(&LOGS);
}

/// Serves `router` on 127.0.0.1 on a free port.
pub async fn serve(router: Router) -> SocketAddr {
    init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// Counts requests.
#[derive(Clone, Debug, Default)]
pub struct Hits(Arc<AtomicUsize>);

impl Hits {
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A runtime with deterministic jitter and its metrics.
pub fn runtime() -> (ToolRuntime, Arc<Metrics>) {
    init();
    let metrics = Arc::new(Metrics::new());
    let rt =
        ToolRuntime::new(ToolSettings::default(), metrics.clone()).with_jitter(Arc::new(MaxJitter));
    (rt, metrics)
}

pub fn ctx() -> ToolContext {
    ToolContext::new("acme", Arc::new(StaticSecrets::new()))
}

pub fn ctx_with(secrets: StaticSecrets) -> ToolContext {
    ToolContext::new("acme", Arc::new(secrets))
}

fn resilience() -> ResilienceConfig {
    ResilienceConfig {
        timeout_ms: 2_000,
        max_retries: 0,
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
        retry_non_idempotent: false,
        circuit_failure_threshold: None,
        circuit_open_seconds: None,
        max_concurrency: None,
    }
}

fn tool(name: &str, type_: ToolType) -> CompiledTool {
    CompiledTool {
        name: name.to_owned(),
        description: format!("{name} for tests"),
        type_,
        input_schema: json!({"type": "object"}),
        http: None,
        mcp: None,
        builtin: None,
        resilience: resilience(),
        require_approval: false,
        egress_allow_hosts: Vec::new(),
        revision: "r1".to_owned(),
    }
}

/// An HTTP tool; loopback is reachable because the allowlist names 127.0.0.1.
pub fn http_tool(name: &str, method: HttpMethod, url: String) -> CompiledTool {
    let mut t = tool(name, ToolType::Http);
    t.http = Some(HttpTool {
        method,
        url,
        headers: Vec::new(),
        body: None,
        response_path: None,
    });
    t.egress_allow_hosts = vec!["127.0.0.1".to_owned()];
    t
}

pub fn secret_header(name: &str, secret: &str, key: &str) -> HttpHeader {
    HttpHeader {
        name: name.to_owned(),
        value: None,
        value_from: Some(ValueFrom {
            secret_key_ref: SecretKeyRef {
                name: secret.to_owned(),
                key: key.to_owned(),
            },
        }),
    }
}

pub fn mcp_tool(name: &str, url: String, remote: &str) -> CompiledTool {
    let mut t = tool(name, ToolType::Mcp);
    t.mcp = Some(McpTool {
        url,
        tool: remote.to_owned(),
        headers: Vec::new(),
    });
    t.egress_allow_hosts = vec!["127.0.0.1".to_owned()];
    t
}

pub fn builtin_tool(name: &str, which: BuiltinName, workflow: Option<&str>) -> CompiledTool {
    let mut t = tool(name, ToolType::Builtin);
    t.builtin = Some(BuiltinTool {
        name: which,
        workflow: workflow.map(str::to_owned),
    });
    t
}

/// One request an MCP server saw.
#[derive(Clone, Debug)]
pub struct McpSeen {
    pub method: String,
    pub session: Option<String>,
    pub protocol: Option<String>,
    pub accept: Option<String>,
    pub params: Value,
}

/// A small streamable-HTTP MCP server: sessions, paginated `tools/list`, and tools `echo`
/// (text), `structured` (structuredContent) and `fail` (isError). Answers with SSE when
/// `sse` is set, after a progress notification, as servers do.
#[derive(Debug, Default)]
pub struct McpServer {
    pub sse: bool,
    pub seen: Mutex<Vec<McpSeen>>,
    pub sessions: Mutex<HashSet<String>>,
}

impl McpServer {
    pub fn methods(&self) -> Vec<String> {
        self.seen.lock().iter().map(|s| s.method.clone()).collect()
    }

    pub fn count(&self, method: &str) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.method == method)
            .count()
    }

    /// Forgets every session, as a restarted server would.
    pub fn forget_sessions(&self) {
        self.sessions.lock().clear();
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/mcp", axum::routing::post(mcp_handler))
            .with_state(self)
    }
}

async fn mcp_handler(
    State(server): State<Arc<McpServer>>,
    headers: HeaderMap,
    body: String,
) -> Response<Body> {
    let msg: Value = serde_json::from_str(&body).unwrap();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let method = msg["method"].as_str().unwrap_or("").to_owned();
    let session = header("mcp-session-id");
    server.seen.lock().push(McpSeen {
        method: method.clone(),
        session: session.clone(),
        protocol: header("mcp-protocol-version"),
        accept: header("accept"),
        params: msg["params"].clone(),
    });
    if method == "initialize" {
        let id = uuid::Uuid::new_v4().to_string();
        server.sessions.lock().insert(id.clone());
        let result = json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "test", "version": "1"},
        });
        return server.reply(&msg, result, Some(id));
    }
    match session {
        Some(s) if server.sessions.lock().contains(&s) => {}
        Some(_) => return status(StatusCode::NOT_FOUND),
        None => return status(StatusCode::BAD_REQUEST),
    }
    if msg.get("id").is_none() {
        return status(StatusCode::ACCEPTED);
    }
    let result = match method.as_str() {
        "tools/list" if msg["params"]["cursor"].is_null() => json!({
            "tools": [{"name": "echo", "inputSchema": {"type": "object"}}],
            "nextCursor": "page-2",
        }),
        "tools/list" => json!({"tools": [
            {"name": "structured", "inputSchema": {"type": "object"}},
            {"name": "fail", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => {
            let args = &msg["params"]["arguments"];
            match msg["params"]["name"].as_str() {
                Some("echo") => json!({"content": [
                    {"type": "text", "text": format!("echo: {}", args["text"].as_str().unwrap_or(""))},
                    {"type": "text", "text": "bye"},
                ]}),
                Some("structured") => json!({
                    "content": [{"type": "text", "text": "{\"sum\": 3}"}],
                    "structuredContent": {"sum": args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0)},
                }),
                Some("fail") => json!({
                    "content": [{"type": "text", "text": "order not found"}],
                    "isError": true,
                }),
                _ => {
                    let err = json!({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32602, "message": "unknown tool"}});
                    return json_response(&err, None);
                }
            }
        }
        _ => {
            let err = json!({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "method not found"}});
            return json_response(&err, None);
        }
    };
    server.reply(&msg, result, None)
}

impl McpServer {
    fn reply(&self, msg: &Value, result: Value, session: Option<String>) -> Response<Body> {
        let response = json!({"jsonrpc": "2.0", "id": msg["id"], "result": result});
        if !self.sse {
            return json_response(&response, session);
        }
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}});
        let body = format!(
            ": ping\n\nevent: message\ndata: {progress}\n\nevent: message\ndata: {response}\n\n"
        );
        let mut builder = Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache");
        if let Some(s) = session {
            builder = builder.header("mcp-session-id", s);
        }
        builder.body(Body::from(body)).unwrap()
    }
}

fn json_response(value: &Value, session: Option<String>) -> Response<Body> {
    let mut builder = Response::builder().header("content-type", "application/json");
    if let Some(s) = session {
        builder = builder.header("mcp-session-id", s);
    }
    builder.body(Body::from(value.to_string())).unwrap()
}

fn status(code: StatusCode) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}

/// A `MakeWriter` that keeps everything written, to search logs for secrets.
#[derive(Clone, Debug, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
