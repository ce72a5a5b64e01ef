//! Chat when things go wrong, through the real binary in dev mode: an upstream answering 500
//! (fallback to the next model), a provider that keeps failing (its circuit breaker opens,
//! calls skip it without reaching it, and a half-open probe closes it again), tools aimed at
//! internal addresses (refused, the target sees nothing) and a WebSocket client that stops
//! reading while tokens stream (closed with 1013) or names another tenant's conversation.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentry_e2e::DevRuntime;
use agentry_e2e::mock_llm::{MockConfig, MockLlm};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A tenant whose models are served by the mock upstream through two providers (so that each
/// has its own breaker), plus the offline provider for the tool tests.
fn manifests(mock: &MockLlm, tool_server: SocketAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = mock.base_url();
    let port = tool_server.port();
    let yaml = format!(
        r#"apiVersion: agentry.dev/v1alpha1
kind: Tenant
metadata: {{name: acme}}
spec:
  displayName: Acme
  chat: {{defaultAgent: resilient}}
  providers:
    - {{name: flaky, type: openai, baseUrl: "{base}", timeoutMs: 5000}}
    - {{name: steady, type: openai, baseUrl: "{base}", timeoutMs: 5000}}
    - {{name: local, type: builtin}}
  models:
    - {{name: flaky, provider: flaky, upstreamModel: flaky-model}}
    - {{name: steady, provider: steady, upstreamModel: steady-model}}
    - {{name: offline, provider: local}}
  network: {{egressAllowlist: ["localhost"]}}
---
apiVersion: agentry.dev/v1alpha1
kind: Agent
metadata: {{name: resilient, namespace: tenant-acme}}
spec:
  model: {{name: flaky, fallbacks: [steady]}}
  systemPrompt: "You answer briefly."
---
apiVersion: agentry.dev/v1alpha1
kind: Agent
metadata: {{name: streamer, namespace: tenant-acme}}
spec:
  model: {{name: steady}}
  systemPrompt: "You answer at length."
---
apiVersion: agentry.dev/v1alpha1
kind: Agent
metadata: {{name: fetcher, namespace: tenant-acme}}
spec:
  model: {{name: offline}}
  systemPrompt: "You fetch things."
  tools: [loopback, metadata, private-net, redirector, allowed-loopback]
  maxToolIterations: 2
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {{name: loopback, namespace: tenant-acme}}
spec:
  description: An internal service on loopback, not allowlisted.
  type: http
  http: {{method: GET, url: "http://127.0.0.1:{port}/secret"}}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {{name: metadata, namespace: tenant-acme}}
spec:
  description: The cloud metadata endpoint.
  type: http
  http: {{method: GET, url: "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}}
  resilience: {{timeoutMs: 2000}}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {{name: private-net, namespace: tenant-acme}}
spec:
  description: A private address.
  type: http
  http: {{method: GET, url: "http://10.23.45.67/admin"}}
  resilience: {{timeoutMs: 2000}}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {{name: redirector, namespace: tenant-acme}}
spec:
  description: An allowlisted host that redirects to loopback.
  type: http
  http: {{method: GET, url: "http://localhost:{port}/redirect"}}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {{name: allowed-loopback, namespace: tenant-acme}}
spec:
  description: The same internal service, allowlisted for this tool.
  type: http
  http: {{method: GET, url: "http://127.0.0.1:{port}/secret"}}
  egress: {{allowHosts: ["127.0.0.1"]}}
---
apiVersion: agentry.dev/v1alpha1
kind: Tenant
metadata: {{name: globex}}
spec:
  chat: {{defaultAgent: assistant}}
  providers:
    - {{name: local, type: builtin}}
  models:
    - {{name: small, provider: local}}
---
apiVersion: agentry.dev/v1alpha1
kind: Agent
metadata: {{name: assistant, namespace: tenant-globex}}
spec:
  model: {{name: small}}
  systemPrompt: "You help."
"#
    );
    std::fs::write(dir.path().join("acme.yaml"), yaml).unwrap();
    dir
}

/// A real HTTP tool server on loopback that counts the requests of each path.
#[derive(Clone, Default)]
struct ToolServer {
    hits: Arc<Mutex<HashMap<String, u64>>>,
}

impl ToolServer {
    async fn start() -> (Self, SocketAddr) {
        let server = Self::default();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(Self::serve))
            .with_state(server.clone());
        (server, agentry_e2e::serve_loopback(app).await.unwrap())
    }

    async fn serve(
        State(server): State<Self>,
        Path(path): Path<String>,
        request: axum::extract::Request,
    ) -> axum::response::Response {
        *server.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        if path == "redirect" {
            let port = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.rsplit(':').next())
                .unwrap_or("80")
                .to_owned();
            let location = format!("http://127.0.0.1:{port}/secret");
            return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
        }
        axum::Json(json!({"secret": "internal data"})).into_response()
    }

    fn hits(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

struct Setup {
    rt: DevRuntime,
    mock: MockLlm,
    tools: ToolServer,
    _manifests: tempfile::TempDir,
    client: reqwest::Client,
    key: String,
}

/// The breaker opens after 3 consecutive failures and stays open for `OPEN_MS`.
const OPEN_MS: u64 = 1_500;

async fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let (tools, tool_addr) = ToolServer::start().await;
    let manifests = manifests(&mock, tool_addr);
    let open_ms = OPEN_MS.to_string();
    let rt = DevRuntime::start_with_env(
        manifests.path(),
        &[
            ("AGENTRY_LLM_BREAKER_FAILURE_THRESHOLD", "3"),
            ("AGENTRY_LLM_BREAKER_OPEN_MS", open_ms.as_str()),
            ("AGENTRY_LLM_RETRY_INITIAL_BACKOFF_MS", "20"),
            // These runs go through the front thread, with usage written and events relayed from
            // the background thread (the default; e2e/tests/chat.rs runs without either): SSE,
            // WebSocket upgrades and slow consumers included.
            ("AGENTRY_HTTP_FRONT_THREAD", "true"),
        ],
    )
    .await
    .unwrap();
    let key = rt.key("acme").to_owned();
    Setup {
        rt,
        mock,
        tools,
        _manifests: manifests,
        client: reqwest::Client::new(),
        key,
    }
}

impl Setup {
    async fn conversation(&self, agent: &str) -> String {
        let r = self
            .client
            .post(format!("{}/api/v1/chat/conversations", self.rt.base_url))
            .bearer_auth(&self.key)
            .json(&json!({"agent": agent}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let created: Value = r.json().await.unwrap();
        created["id"].as_str().unwrap().to_owned()
    }

    /// Sends `content` and returns the status and the JSON answer.
    async fn say(&self, conversation: &str, content: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!(
                "{}/api/v1/chat/conversations/{conversation}/messages",
                self.rt.base_url
            ))
            .bearer_auth(&self.key)
            .json(&json!({"content": content}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// `agentry_provider_circuit_state{tenant="acme",provider=...}` from `/metrics`.
    async fn circuit_gauge(&self, provider: &str) -> Option<i64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.rt.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let labels = format!("provider=\"{provider}\"");
        text.lines()
            .filter(|l| l.starts_with("agentry_provider_circuit_state{"))
            .find(|l| l.contains(&labels) && l.contains("tenant=\"acme\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_fall_back_and_the_breaker_opens_and_closes() {
    let s = setup().await;
    let conversation = s.conversation("resilient").await;

    // The primary model answers 500: the call is retried (3 attempts), then the fallback
    // answers. The client sees a normal answer.
    s.mock.fail_model("flaky-model", Some(500));
    let (status, answer) = s.say(&conversation, "Hello, who answers?").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["message"]["content"],
        agentry_e2e::mock_llm::DEFAULT_REPLY
    );
    assert_eq!(s.mock.requests("flaky-model"), 3);
    assert_eq!(s.mock.requests("steady-model"), 1);
    assert_eq!(
        answer["message"]["model"], "steady",
        "the fallback is recorded: {answer}"
    );

    // Three consecutive failures opened the flaky provider's circuit: further calls skip it
    // at once and never reach the upstream.
    assert_eq!(s.circuit_gauge("flaky").await, Some(1));
    let opened = Instant::now();
    for _ in 0..3 {
        let (status, answer) = s.say(&conversation, "Still there?").await;
        assert_eq!(status, 200, "{answer}");
    }
    assert!(
        opened.elapsed() < Duration::from_millis(OPEN_MS),
        "the open period ran out before the check; the test machine is too slow"
    );
    assert_eq!(
        s.mock.requests("flaky-model"),
        3,
        "an open circuit was called"
    );
    assert_eq!(s.mock.requests("steady-model"), 4);

    // After the open period one probe goes through. It fails: the circuit opens again.
    tokio::time::sleep(Duration::from_millis(OPEN_MS + 100)).await;
    let (status, _) = s.say(&conversation, "Probe one.").await;
    assert_eq!(status, 200);
    assert_eq!(s.mock.requests("flaky-model"), 4, "one half-open probe");
    assert_eq!(s.circuit_gauge("flaky").await, Some(1));
    let (status, _) = s.say(&conversation, "Skipped again.").await;
    assert_eq!(status, 200);
    assert_eq!(s.mock.requests("flaky-model"), 4);

    // The upstream recovers; the next probe succeeds and closes the circuit.
    s.mock.fail_model("flaky-model", None);
    tokio::time::sleep(Duration::from_millis(OPEN_MS + 100)).await;
    let steady_before = s.mock.requests("steady-model");
    let (status, answer) = s.say(&conversation, "Probe two.").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.mock.requests("flaky-model"), 5);
    assert_eq!(s.mock.requests("steady-model"), steady_before);
    assert_eq!(s.circuit_gauge("flaky").await, Some(0));
    let (status, _) = s.say(&conversation, "Closed now.").await;
    assert_eq!(status, 200);
    assert_eq!(s.mock.requests("flaky-model"), 6);

    // With every model failing the client gets a 502 naming the upstream failure.
    s.mock.fail_model("flaky-model", Some(503));
    s.mock.fail_model("steady-model", Some(500));
    let (status, answer) = s.say(&conversation, "Nobody home?").await;
    assert_eq!(status, 502, "{answer}");
    s.rt.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_cannot_reach_internal_addresses() {
    let s = setup().await;
    let conversation = s.conversation("fetcher").await;

    for (tool, host) in [
        ("loopback", "127.0.0.1"),
        ("metadata", "169.254.169.254"),
        ("private-net", "10.23.45.67"),
        // An allowlisted name that redirects to a loopback address that is not.
        ("redirector", "127.0.0.1"),
    ] {
        let started = Instant::now();
        let (status, answer) = s.say(&conversation, &format!("/{tool}")).await;
        assert_eq!(status, 200, "{answer}");
        let calls = answer["toolCalls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{answer}");
        let text = answer["message"]["content"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{tool} returned: error (egress_denied)"))
                && text.contains(host),
            "{tool}: {answer}"
        );
        // Refused before any connection: no connect timeout was waited for.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{tool} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        s.tools.hits("secret"),
        0,
        "a refused call reached the server"
    );
    assert_eq!(
        s.tools.hits("redirect"),
        1,
        "the allowlisted host was called"
    );

    // The same server is reachable when the tool's allowlist names it: the refusals above are
    // the egress rules, not an unreachable server.
    let (status, answer) = s.say(&conversation, "/allowed-loopback").await;
    assert_eq!(status, 200, "{answer}");
    let text = answer["message"]["content"].as_str().unwrap();
    assert!(text.contains("internal data"), "{answer}");
    assert_eq!(s.tools.hits("secret"), 1);
    s.rt.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_closed_with_1013() {
    let s = setup().await;
    let conversation = s.conversation("streamer").await;
    let url = s.rt.base_url.replacen("http://", "ws://", 1) + "/ws/chat";
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.key).parse().unwrap(),
    );
    // A small receive buffer: the kernel stops taking data for this client early, so the
    // backlog piles up in the server (as with a slow mobile client).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let addr: SocketAddr = s.rt.base_url.trim_start_matches("http://").parse().unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();

    // Another tenant's conversation does not exist on this socket.
    let globex: Value = s
        .client
        .post(format!("{}/api/v1/chat/conversations", s.rt.base_url))
        .bearer_auth(s.rt.key("globex"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let foreign = json!({"type": "message", "conversationId": globex["id"],
                         "content": "Let me in.", "id": "foreign"});
    ws.send(Message::text(foreign.to_string())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{reply}"
    );

    // 8 MiB of text in 1 KiB tokens, streamed as fast as the runtime takes them.
    let message = json!({"type": "message", "conversationId": conversation,
                         "content": "#burst 8192 1024", "id": "flood"});
    ws.send(Message::text(message.to_string())).await.unwrap();

    // Read nothing until the runtime gives up on this client, then drain the socket: the
    // close frame comes after what was already sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.rt.printed("slow consumer: closing the socket") {
        assert!(
            Instant::now() < deadline,
            "the runtime never flagged the slow client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut received = 0usize;
    let close = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the socket neither closed nor sent anything for 10 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(event["type"], "token", "{event}");
                received += event["delta"].as_str().unwrap().len();
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    assert_eq!(u16::from(close.code), 1013);
    assert!(
        received < 8192 * 1024,
        "the whole answer arrived ({received} bytes): the client was not behind"
    );
    s.rt.cleanup().await.unwrap();
}
