//! The HTTP foundation through the real binary: request ids, JSON errors, limits on bodies,
//! metrics, the OpenAPI document and docs page, readiness and graceful shutdown.

use agentry_e2e::{DevRuntime, copy_examples};
use serde_json::Value;

fn assert_json_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foundation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let manifests = copy_examples().unwrap();
    let mut rt = DevRuntime::start(manifests.path()).await.unwrap();
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", rt.base_url);

    // Request ids: generated when absent, echoed when sent.
    let r = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("x-request-id")
            .is_some_and(|v| v.len() >= 32)
    );
    let r = client
        .get(url("/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123");

    let ready: Value = client
        .get(url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"],
        serde_json::json!({"database": true, "nats": true, "bundle": true, "draining": false})
    );

    // JSON errors everywhere.
    let r = client.get(url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_json_error(&r.json().await.unwrap(), "not_found");
    let r = client
        .get(url("/api/v1/admin/bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_json_error(&r.json().await.unwrap(), "unauthorized");
    let key = rt.key("acme").to_owned();
    let r = client
        .post(url("/api/v1/keys"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_json_error(&r.json().await.unwrap(), "bad_request");
    let big = format!(
        "{{\"name\": \"{}\", \"scopes\": [\"chat\"]}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = reqwest::Client::new() // its connection is closed by the server after the 413
        .post(url("/api/v1/keys"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_json_error(&r.json().await.unwrap(), "payload_too_large");

    // Metrics by tenant, route and status.
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"agentry_http_requests_total{tenant="acme",route="/api/v1/keys",method="POST",status="400"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentry_http_request_duration_seconds_bucket"),
        "{metrics}"
    );

    // OpenAPI 3.1 generated from the handlers, and the docs page listing them.
    let doc: Value = client
        .get(url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/keys",
        "/api/v1/keys/{id}",
        "/api/v1/audit",
        "/api/v1/admin/bundle",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }
    let page = client
        .get(url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/api/v1/audit") && page.contains("/openapi.json"));

    // SIGTERM: drains and exits cleanly.
    let status = rt.terminate().await.unwrap();
    assert!(status.success(), "exit status {status}");
    rt.cleanup().await.unwrap();
}
