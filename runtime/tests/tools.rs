//! The tool runtime against real loopback servers: validation, templating, secrets, egress
//! rules, retries, timeouts, the breaker, the bulkhead, MCP and the built-ins.
//!
//! Loopback is an address tools may not reach, so every tool here names `127.0.0.1` (or
//! `localhost`) in its egress allowlist, exactly as a tenant names an internal service; the
//! egress tests leave it out and prove nothing is sent.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

mod tools_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use agentry_crds::tool::{BuiltinName, HttpMethod};
use agentry_runtime::tools::resilience::CircuitState;
use agentry_runtime::tools::{
    ControlAction, ManualClock, StaticSecrets, ToolError, ToolOutcome, ToolOutput,
};
use axum::Router;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{any, get};
use chrono::TimeZone;
use serde_json::{Value, json};
use tools_support::*;

fn output(outcome: ToolOutcome) -> ToolOutput {
    match outcome {
        ToolOutcome::Output(o) => o,
        other => panic!("expected output, got {other:?}"),
    }
}

/// A server answering every request with `status` and counting them.
async fn status_server(status: Arc<AtomicU16>, hits: Hits) -> std::net::SocketAddr {
    let app = Router::new().fallback(any(move || {
        let status = status.clone();
        let hits = hits.clone();
        async move {
            hits.hit();
            let code = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
            (code, axum::Json(json!({"ok": code.is_success()})))
        }
    }));
    serve(app).await
}

#[tokio::test]
async fn invalid_arguments_name_the_path_and_send_nothing() {
    let hits = Hits::default();
    let addr = status_server(Arc::new(AtomicU16::new(200)), hits.clone()).await;
    let (rt, _) = runtime();
    let mut tool = http_tool(
        "lookup",
        HttpMethod::GET,
        format!("http://{addr}/o/{{{{ args.orderId }}}}"),
    );
    tool.input_schema = json!({
        "type": "object",
        "required": ["orderId"],
        "properties": {"orderId": {"type": "string", "pattern": "^[A-Z]-[0-9]+$"}, "n": {"type": "integer"}},
        "additionalProperties": false,
    });
    let err = rt
        .call(&ctx(), &tool, json!({"orderId": "nope", "n": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_arguments");
    let msg = err.to_string();
    assert!(msg.contains("/orderId"), "{msg}");
    assert!(msg.contains("/n"), "{msg}");
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert!(err.to_string().contains("orderId"), "{err}");
    assert_eq!(hits.get(), 0);
    let ok = rt
        .call(&ctx(), &tool, json!({"orderId": "A-1"}))
        .await
        .unwrap();
    assert_eq!(output(ok).content, json!({"ok": true}));
    assert_eq!(hits.get(), 1);
}

#[tokio::test]
async fn url_arguments_are_encoded_and_cannot_change_the_path() {
    type Seen = Arc<parking_lot::Mutex<Vec<(String, String)>>>;
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/orders/{id}/items",
            get(
                |State(seen): State<Seen>,
                 Path(id): Path<String>,
                 OriginalUri(uri): OriginalUri| async move {
                    seen.lock().push((id.clone(), uri.to_string()));
                    axum::Json(json!({"id": id}))
                },
            ),
        )
        .with_state(seen.clone());
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let tool = http_tool(
        "items",
        HttpMethod::GET,
        format!("http://{addr}/orders/{{{{ args.id }}}}/items?limit={{{{ args.limit }}}}"),
    );
    let evil = "../admin?x=1#frag";
    let out = output(
        rt.call(&ctx(), &tool, json!({"id": evil, "limit": 5}))
            .await
            .unwrap(),
    );
    assert_eq!(out.content, json!({"id": evil}));
    let (id, uri) = seen.lock()[0].clone();
    assert_eq!(id, evil);
    assert_eq!(uri, "/orders/..%2Fadmin%3Fx%3D1%23frag/items?limit=5");
}

#[tokio::test]
async fn secret_headers_reach_the_server_but_never_errors_or_logs() {
    let secret = "Bearer tok-7f3a9c21e5";
    let received = Arc::new(parking_lot::Mutex::new(None::<String>));
    let app = Router::new()
        .fallback(any(
            |State(received): State<Arc<parking_lot::Mutex<Option<String>>>>,
             headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                *received.lock() = auth.clone();
                // An endpoint that echoes request headers in its error.
                (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "bad request; you sent authorization={}",
                        auth.unwrap_or_default()
                    ),
                )
            },
        ))
        .with_state(received.clone());
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("secretive", HttpMethod::GET, format!("http://{addr}/x"));
    if let Some(http) = tool.http.as_mut() {
        http.headers
            .push(secret_header("Authorization", "acme-api", "token"));
    }
    let with_secret = ctx_with(StaticSecrets::new().with("acme-api", "token", secret));
    let err = rt.call(&with_secret, &tool, json!({})).await.unwrap_err();
    assert_eq!(received.lock().as_deref(), Some(secret));
    assert_eq!(err.code(), "http_status");
    let shown = format!("{err} {err:?} {}", err.to_json());
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(!shown.contains("tok-7f3a9c21e5"), "{shown}");
    let logs = LOGS.text();
    assert!(
        logs.contains("tool=secretive"),
        "the logs were captured: {logs}"
    );
    assert!(!logs.contains("tok-7f3a9c21e5"), "{logs}");

    // A missing Secret is a configuration error that names the Secret, not a value.
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "misconfigured");
    assert!(err.to_string().contains("acme-api"), "{err}");
}

#[tokio::test]
async fn body_template_idempotency_key_and_response_path() {
    let app = Router::new().fallback(any(|headers: HeaderMap, body: String| async move {
        axum::Json(json!({
            "refund": {
                "received": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
                "idempotencyKey": headers.get("idempotency-key").and_then(|v| v.to_str().ok()),
                "contentType": headers.get("content-type").and_then(|v| v.to_str().ok()),
            }
        }))
    }));
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("refund", HttpMethod::POST, format!("http://{addr}/refunds"));
    if let Some(http) = tool.http.as_mut() {
        http.body = Some(
            r#"{"order": {{ args.orderId }}, "reason": {{ args.reason | default("customer request") | tojson }}, "n": {{ args.n }}}"#
                .to_owned(),
        );
        http.response_path = Some("/refund".to_owned());
    }
    let ctx = ctx().with_idempotency_key("run-1/step-2");
    let injected = "A-1\", \"amount\": 1000000, \"x\": \"";
    let out = output(
        rt.call(&ctx, &tool, json!({"orderId": injected, "n": 2}))
            .await
            .unwrap(),
    );
    assert_eq!(
        out.content,
        json!({
            "received": {"order": injected, "reason": "customer request", "n": 2},
            "idempotencyKey": "run-1/step-2",
            "contentType": "application/json",
        })
    );

    // Without a body template the arguments are the body.
    if let Some(http) = tool.http.as_mut() {
        http.body = None;
        http.response_path = Some("/refund/received".to_owned());
    }
    tool.revision = "r2".to_owned();
    let out = output(
        rt.call(&ctx, &tool, json!({"orderId": "A-2"}))
            .await
            .unwrap(),
    );
    assert_eq!(out.content, json!({"orderId": "A-2"}));

    // A path the response lacks is an error naming it.
    if let Some(http) = tool.http.as_mut() {
        http.response_path = Some("/refund/missing".to_owned());
    }
    tool.revision = "r3".to_owned();
    let err = rt.call(&ctx, &tool, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "response_path_missing");
    assert!(err.to_string().contains("/refund/missing"), "{err}");
}

#[tokio::test]
async fn large_text_responses_are_truncated() {
    let app = Router::new().fallback(any(|| async { "x".repeat(200 * 1024) }));
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let tool = http_tool("big", HttpMethod::GET, format!("http://{addr}/"));
    let out = output(rt.call(&ctx(), &tool, json!({})).await.unwrap());
    assert!(out.truncated);
    assert_eq!(
        out.content.as_str().unwrap().len(),
        agentry_runtime::tools::MAX_OUTPUT_BYTES
    );
    assert!(out.to_model_text().ends_with("[output truncated]"));
}

/// A server that answers 503 `failures` times, then 200.
async fn flaky_server(failures: usize, hits: Hits) -> std::net::SocketAddr {
    let app = Router::new().fallback(any(move || {
        let hits = hits.clone();
        async move {
            if hits.hit() <= failures {
                (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
            } else {
                axum::Json(json!({"ok": true})).into_response()
            }
        }
    }));
    serve(app).await
}

#[tokio::test]
async fn idempotent_calls_are_retried_on_503() {
    let hits = Hits::default();
    let addr = flaky_server(1, hits.clone()).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("get", HttpMethod::GET, format!("http://{addr}/"));
    tool.resilience.max_retries = 2;
    let out = output(rt.call(&ctx(), &tool, json!({})).await.unwrap());
    assert_eq!(out.content, json!({"ok": true}));
    assert_eq!(hits.get(), 2);
}

#[tokio::test]
async fn post_is_not_retried_unless_the_tool_allows_it() {
    let hits = Hits::default();
    let addr = flaky_server(1, hits.clone()).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("post", HttpMethod::POST, format!("http://{addr}/"));
    tool.resilience.max_retries = 2;
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::HttpStatus {
            status: 503,
            body: "try later".into()
        }
    );
    assert_eq!(hits.get(), 1);

    let hits = Hits::default();
    let addr = flaky_server(1, hits.clone()).await;
    let mut tool = http_tool("post2", HttpMethod::POST, format!("http://{addr}/"));
    tool.resilience.max_retries = 2;
    tool.resilience.retry_non_idempotent = true;
    rt.call(&ctx(), &tool, json!({})).await.unwrap();
    assert_eq!(hits.get(), 2);
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_post() {
    // A port nobody listens on: the request never left, so repeating it is safe.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (rt, metrics) = runtime();
    let mut tool = http_tool("down", HttpMethod::POST, format!("http://{addr}/"));
    tool.resilience.max_retries = 2;
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "unavailable");
    assert!(err.to_string().contains("connection failed"), "{err}");
    assert!(
        !err.to_string().contains(&addr.port().to_string()),
        "no URL in the message: {err}"
    );
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"agentry_tool_calls_total{tenant="acme",tool="down",outcome="unavailable"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn attempts_time_out() {
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new().fallback(any(move || {
        let h = h.clone();
        async move {
            h.hit();
            tokio::time::sleep(Duration::from_secs(2)).await;
            "late"
        }
    }));
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("slow", HttpMethod::GET, format!("http://{addr}/"));
    tool.resilience.timeout_ms = 100;
    tool.resilience.max_retries = 1;
    let started = Instant::now();
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(err, ToolError::Timeout { after_ms: 100 });
    assert_eq!(hits.get(), 2, "a GET that timed out is retried");
    assert!(started.elapsed() < Duration::from_secs(1));

    // The caller's deadline wins over the tool's timeout.
    tool.resilience.timeout_ms = 5_000;
    tool.resilience.max_retries = 0;
    tool.revision = "r2".to_owned();
    let ctx = ctx().with_deadline(Instant::now() + Duration::from_millis(150));
    let started = Instant::now();
    let err = rt.call(&ctx, &tool, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "timeout");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn breaker_opens_fails_fast_half_opens_and_closes() {
    let hits = Hits::default();
    let status = Arc::new(AtomicU16::new(500));
    let addr = status_server(status.clone(), hits.clone()).await;
    let clock = Arc::new(ManualClock::new());
    let (rt, metrics) = runtime();
    let rt = rt.with_clock(clock.clone());
    let mut tool = http_tool("flaky", HttpMethod::GET, format!("http://{addr}/"));
    tool.resilience.circuit_failure_threshold = Some(2);
    tool.resilience.circuit_open_seconds = Some(30);
    let gauge = |v: u8| format!(r#"agentry_tool_circuit_state{{tenant="acme",tool="flaky"}} {v}"#);

    for _ in 0..2 {
        let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
        assert_eq!(err.code(), "http_status");
    }
    assert_eq!(hits.get(), 2);
    assert!(metrics.encode().contains(&gauge(1)), "{}", metrics.encode());
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::CircuitOpen {
            retry_after_secs: 30
        }
    );
    assert_eq!(hits.get(), 2, "an open breaker sends nothing");

    clock.advance(Duration::from_secs(31));
    assert_eq!(
        rt.circuit_state("acme", "flaky"),
        Some(CircuitState::HalfOpen)
    );
    assert!(metrics.encode().contains(&gauge(2)));
    // The trial fails: open again.
    rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(hits.get(), 3);
    assert_eq!(rt.circuit_state("acme", "flaky"), Some(CircuitState::Open));

    clock.advance(Duration::from_secs(31));
    status.store(200, Ordering::SeqCst);
    rt.call(&ctx(), &tool, json!({})).await.unwrap();
    assert_eq!(hits.get(), 4);
    assert_eq!(
        rt.circuit_state("acme", "flaky"),
        Some(CircuitState::Closed)
    );
    assert!(metrics.encode().contains(&gauge(0)));
}

#[tokio::test]
async fn client_errors_do_not_open_the_breaker_and_a_new_revision_resets_it() {
    let hits = Hits::default();
    let status = Arc::new(AtomicU16::new(404));
    let addr = status_server(status.clone(), hits.clone()).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("t", HttpMethod::GET, format!("http://{addr}/"));
    tool.resilience.circuit_failure_threshold = Some(1);
    tool.resilience.circuit_open_seconds = Some(600);
    rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(rt.circuit_state("acme", "t"), Some(CircuitState::Closed));
    status.store(502, Ordering::SeqCst);
    rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(rt.circuit_state("acme", "t"), Some(CircuitState::Open));
    assert_eq!(
        rt.call(&ctx(), &tool, json!({})).await.unwrap_err().code(),
        "circuit_open"
    );
    // Other tenants have their own breaker.
    let other = agentry_runtime::tools::ToolContext::new("globex", Arc::new(StaticSecrets::new()));
    assert_eq!(
        rt.call(&other, &tool, json!({})).await.unwrap_err().code(),
        "http_status"
    );
    tool.revision = "r2".to_owned();
    status.store(200, Ordering::SeqCst);
    rt.call(&ctx(), &tool, json!({})).await.unwrap();
    assert_eq!(hits.get(), 4);
}

#[tokio::test]
async fn bulkhead_rejects_calls_beyond_the_limit() {
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new().fallback(any(move || {
        let h = h.clone();
        async move {
            h.hit();
            tokio::time::sleep(Duration::from_millis(300)).await;
            axum::Json(json!({"ok": true}))
        }
    }));
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let mut tool = http_tool("narrow", HttpMethod::GET, format!("http://{addr}/"));
    tool.resilience.max_concurrency = Some(2);
    let c = ctx();
    let calls = (0..4).map(|_| rt.call(&c, &tool, json!({})));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(ToolError::Overloaded)))
        .count();
    assert_eq!((ok, overloaded), (2, 2), "{results:?}");
    assert_eq!(hits.get(), 2);
    // Slots come back.
    rt.call(&c, &tool, json!({})).await.unwrap();
}

#[tokio::test]
async fn egress_to_internal_addresses_is_refused_before_any_connection() {
    let hits = Hits::default();
    let addr = status_server(Arc::new(AtomicU16::new(200)), hits.clone()).await;
    let (rt, _) = runtime();
    let refused = [
        format!("http://{addr}/"),
        format!("http://localhost:{}/", addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/", addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://[fd00:ec2::254]/".to_owned(),
        "http://0.0.0.0/".to_owned(),
    ];
    for (i, url) in refused.iter().enumerate() {
        let mut tool = http_tool(&format!("t{i}"), HttpMethod::GET, url.clone());
        tool.egress_allow_hosts.clear();
        tool.resilience.max_retries = 3;
        let started = Instant::now();
        let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
        assert_eq!(err.code(), "egress_denied", "{url}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{url} was refused without trying"
        );
    }
    assert_eq!(hits.get(), 0);

    // Schemes other than http(s) and credentials in the URL.
    for url in ["ftp://example.com/", "http://user:pw@example.com/"] {
        let tool = http_tool("scheme", HttpMethod::GET, url.to_owned());
        assert_eq!(
            rt.call(&ctx(), &tool, json!({})).await.unwrap_err().code(),
            "egress_denied"
        );
    }
}

#[tokio::test]
async fn redirects_are_checked_again_at_every_hop() {
    let target_hits = Hits::default();
    let target = status_server(Arc::new(AtomicU16::new(200)), target_hits.clone()).await;
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new().route(
        "/to/{where}",
        get(move |Path(to): Path<String>| {
            let h = h.clone();
            async move {
                h.hit();
                match to.as_str() {
                    "metadata" => Redirect::temporary("http://169.254.169.254/latest/meta-data/"),
                    "loopback" => {
                        Redirect::temporary(&format!("http://127.0.0.1:{}/", target.port()))
                    }
                    "allowed" => {
                        Redirect::temporary(&format!("http://localhost:{}/ok", target.port()))
                    }
                    "file" => Redirect::temporary("file:///etc/passwd"),
                    _ => Redirect::temporary("/to/loop"),
                }
            }
        }),
    );
    let origin = serve(app).await;
    let (rt, _) = runtime();
    let tool_to = |name: &str, to: &str| {
        let mut t = http_tool(
            name,
            HttpMethod::GET,
            format!("http://localhost:{}/to/{to}", origin.port()),
        );
        t.egress_allow_hosts = vec!["localhost".to_owned()];
        t
    };
    for to in ["metadata", "loopback", "file"] {
        let err = rt
            .call(&ctx(), &tool_to(to, to), json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "egress_denied", "{to}: {err}");
    }
    assert_eq!(hits.get(), 3);
    assert_eq!(
        target_hits.get(),
        0,
        "127.0.0.1 is not named by the allowlist"
    );
    // A redirect to an allowed host is followed.
    let out = output(
        rt.call(&ctx(), &tool_to("allowed", "allowed"), json!({}))
            .await
            .unwrap(),
    );
    assert_eq!(out.content, json!({"ok": true}));
    assert_eq!(target_hits.get(), 1);
    let err = rt
        .call(&ctx(), &tool_to("loop", "loop"), json!({}))
        .await
        .unwrap_err();
    assert_eq!(err, ToolError::TooManyRedirects { max: 5 });
}

#[tokio::test]
async fn mcp_json_responses() {
    mcp_round_trip(false).await;
}

#[tokio::test]
async fn mcp_sse_responses() {
    mcp_round_trip(true).await;
}

async fn mcp_round_trip(sse: bool) {
    let server = Arc::new(McpServer {
        sse,
        ..Default::default()
    });
    let addr = serve(server.clone().router()).await;
    let url = format!("http://{addr}/mcp");
    let (rt, _) = runtime();
    let echo = mcp_tool("echo", url.clone(), "echo");
    let out = output(rt.call(&ctx(), &echo, json!({"text": "hi"})).await.unwrap());
    assert_eq!(out.content, json!("echo: hi\nbye"));
    assert_eq!(
        server.methods(),
        [
            "initialize",
            "notifications/initialized",
            "tools/list",
            "tools/list",
            "tools/call"
        ]
    );
    let seen = server.seen.lock().clone();
    let session = seen[0].session.clone();
    assert!(session.is_none(), "initialize carries no session");
    let assigned = seen[1].session.clone().unwrap();
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.session.as_deref() == Some(assigned.as_str()))
    );
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.protocol.as_deref() == Some("2025-06-18"))
    );
    assert!(
        seen.iter()
            .all(|s| s.accept.as_deref() == Some("application/json, text/event-stream"))
    );
    assert_eq!(
        seen[4].params,
        json!({"name": "echo", "arguments": {"text": "hi"}})
    );

    // Other tools on the same server reuse the session and the cached list.
    let structured = mcp_tool("add", url.clone(), "structured");
    let out = output(
        rt.call(&ctx(), &structured, json!({"a": 1, "b": 2}))
            .await
            .unwrap(),
    );
    assert_eq!(out.content, json!({"sum": 3}));
    let fail = mcp_tool("fail", url.clone(), "fail");
    let err = rt.call(&ctx(), &fail, json!({})).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::ToolFailed {
            message: "order not found".into()
        }
    );
    assert_eq!(server.count("initialize"), 1);
    assert_eq!(server.count("tools/list"), 2);

    // A tool the server does not offer: listed once more, then refused.
    let missing = mcp_tool("missing", url.clone(), "nope");
    let err = rt.call(&ctx(), &missing, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "misconfigured");
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(server.count("tools/call"), 3);

    // The server restarts and forgets the session: a new one is made and the call repeated.
    server.forget_sessions();
    let out = output(
        rt.call(&ctx(), &echo, json!({"text": "again"}))
            .await
            .unwrap(),
    );
    assert_eq!(out.content, json!("echo: again\nbye"));
    assert_eq!(server.count("initialize"), 2);
}

#[tokio::test]
async fn mcp_calls_are_not_repeated_unless_allowed() {
    let hits = Hits::default();
    let server = Arc::new(McpServer::default());
    let inner = server.clone().router();
    let h = hits.clone();
    // In front of the MCP server: every tools/call fails with 503.
    let app = Router::new().fallback(any(move |req: axum::extract::Request| {
        let inner = inner.clone();
        let h = h.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            if String::from_utf8_lossy(&bytes).contains("tools/call") {
                h.hit();
                return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
            }
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            tower::ServiceExt::oneshot(inner, req).await.into_response()
        }
    }));
    let addr = serve(app).await;
    let (rt, _) = runtime();
    let mut tool = mcp_tool("echo", format!("http://{addr}/mcp"), "echo");
    tool.resilience.max_retries = 2;
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "http_status");
    assert_eq!(hits.get(), 1);
    tool.resilience.retry_non_idempotent = true;
    tool.revision = "r2".to_owned();
    rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(hits.get(), 4);
}

#[tokio::test]
async fn mcp_servers_on_internal_addresses_need_the_allowlist() {
    let server = Arc::new(McpServer::default());
    let addr = serve(server.clone().router()).await;
    let (rt, _) = runtime();
    let mut tool = mcp_tool("echo", format!("http://{addr}/mcp"), "echo");
    tool.egress_allow_hosts.clear();
    let err = rt.call(&ctx(), &tool, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "egress_denied");
    assert!(server.methods().is_empty());
}

#[tokio::test]
async fn builtins() {
    let clock = Arc::new(ManualClock::at(
        chrono::Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
    ));
    let (rt, _) = runtime();
    let rt = rt.with_clock(clock);
    let now = builtin_tool("current-time", BuiltinName::CurrentTime, None);
    let out = output(rt.call(&ctx(), &now, Value::Null).await.unwrap());
    assert_eq!(out.content, json!("2025-01-02T03:04:05Z"));

    let handoff = builtin_tool("escalate", BuiltinName::Handoff, None);
    assert_eq!(
        rt.call(&ctx(), &handoff, json!({"reason": "angry customer"}))
            .await
            .unwrap(),
        ToolOutcome::Control(ControlAction::Handoff {
            reason: Some("angry customer".into())
        })
    );
    let mut transfer = builtin_tool("transfer", BuiltinName::TransferToAgent, None);
    transfer.input_schema = json!({"type": "object", "required": ["agent"], "properties": {"agent": {"type": "string"}}});
    assert_eq!(
        rt.call(&ctx(), &transfer, json!({"agent": "billing"}))
            .await
            .unwrap(),
        ToolOutcome::Control(ControlAction::Transfer {
            agent: "billing".into(),
            reason: None
        })
    );
    let err = rt.call(&ctx(), &transfer, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "invalid_arguments");
    let workflow = builtin_tool("refund", BuiltinName::RunWorkflow, Some("refund"));
    let outcome = rt
        .call(&ctx(), &workflow, json!({"orderId": "A-1"}))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ToolOutcome::Control(ControlAction::RunWorkflow {
            workflow: "refund".into(),
            input: json!({"orderId": "A-1"})
        })
    );
    assert_eq!(
        serde_json::to_value(&outcome).unwrap(),
        json!({"kind": "control", "action": "run_workflow", "workflow": "refund", "input": {"orderId": "A-1"}})
    );
}
