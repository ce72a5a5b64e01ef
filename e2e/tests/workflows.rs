//! Workflows through the real binary in dev mode: the example `refund` workflow of
//! `manifests/examples/acme.yaml` against a real HTTP order service on loopback that honours
//! `Idempotency-Key`, and the reply agent served by the mock LLM. A small order is refunded
//! at once; a large one waits for an approval and is refunded or denied; a replica killed
//! while the refund call is in flight is replaced by a new process that finishes the run
//! without refunding twice; invalid input and unknown workflows are refused; a run's steps
//! and status stream over SSE.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentry_e2e::mock_llm::{DEFAULT_REPLY, MockConfig, MockLlm};
use agentry_e2e::{DevRuntime, is_event_stream, repo_root, serve_loopback, sse_events};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// A lease short enough that a killed replica's run is taken over within seconds.
const LEASE_SECONDS: &str = "3";

/// How long the order service holds its answer to the first refund request of an order
/// marked slow (the effect is recorded before the wait, as a real service would).
const SLOW_REFUND: Duration = Duration::from_millis(2_500);

/// The order service: `GET /orders/{id}` answers an order whose total is the number after
/// the id's last `-` (`A-250` costs 250 USD); `POST /orders/{id}/refunds` applies a refund
/// once per `Idempotency-Key` and answers every repeat of a key with the same refund.
#[derive(Clone, Default)]
struct OrderService {
    inner: Arc<Mutex<Ledger>>,
}

#[derive(Default)]
struct Ledger {
    /// Refund applied for each idempotency key: (order, refund id).
    by_key: HashMap<String, (String, String)>,
    /// Distinct refunds applied per order.
    refunds: HashMap<String, HashSet<String>>,
    /// Refund requests received per order (repeats included).
    refund_requests: HashMap<String, u64>,
    /// Idempotency keys seen on refund requests, in order.
    keys: Vec<Option<String>>,
    /// Orders whose first refund answer is held back.
    slow: HashSet<String>,
    lookups: u64,
}

impl OrderService {
    async fn start() -> (Self, SocketAddr) {
        let service = Self::default();
        let app = axum::Router::new()
            .route("/orders/{id}", axum::routing::get(Self::lookup))
            .route("/orders/{id}/refunds", axum::routing::post(Self::refund))
            .with_state(service.clone());
        (service, serve_loopback(app).await.unwrap())
    }

    async fn lookup(State(service): State<Self>, Path(id): Path<String>) -> impl IntoResponse {
        service.inner.lock().unwrap().lookups += 1;
        let Some(total) = id.rsplit('-').next().and_then(|t| t.parse::<f64>().ok()) else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "no such order"})),
            );
        };
        (
            StatusCode::OK,
            axum::Json(json!({"order": {"id": id, "status": "delivered", "total": total}})),
        )
    }

    async fn refund(
        State(service): State<Self>,
        Path(order): Path<String>,
        headers: HeaderMap,
    ) -> impl IntoResponse {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (refund_id, hold) = {
            let mut ledger = service.inner.lock().unwrap();
            ledger.keys.push(key.clone());
            let requests = {
                let n = ledger.refund_requests.entry(order.clone()).or_default();
                *n += 1;
                *n
            };
            let existing = key.as_ref().and_then(|k| ledger.by_key.get(k)).cloned();
            let refund_id = match existing {
                Some((_, id)) => id,
                None => {
                    let id = format!("rf-{}", uuid::Uuid::new_v4().simple());
                    ledger
                        .refunds
                        .entry(order.clone())
                        .or_default()
                        .insert(id.clone());
                    if let Some(k) = &key {
                        ledger.by_key.insert(k.clone(), (order.clone(), id.clone()));
                    }
                    id
                }
            };
            (refund_id, requests == 1 && ledger.slow.contains(&order))
        };
        if hold {
            tokio::time::sleep(SLOW_REFUND).await;
        }
        axum::Json(json!({"refund": {"id": refund_id, "orderId": order, "status": "issued"}}))
    }

    fn slow_on_first_refund(&self, order: &str) {
        self.inner.lock().unwrap().slow.insert(order.to_owned());
    }

    fn refunds(&self, order: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .refunds
            .get(order)
            .map_or(0, HashSet::len)
    }

    fn refund_requests(&self, order: &str) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .refund_requests
            .get(order)
            .copied()
            .unwrap_or(0)
    }

    fn keys(&self) -> Vec<Option<String>> {
        self.inner.lock().unwrap().keys.clone()
    }
}

/// The example acme tenant with its models served by the mock LLM and the two order tools
/// aimed at the local order service (allowed through the tool's egress allowlist).
fn manifests(mock: &MockLlm, orders: SocketAddr) -> tempfile::TempDir {
    let text = std::fs::read_to_string(repo_root().join("manifests/examples/acme.yaml")).unwrap();
    let mut out = String::new();
    for doc in text.split("\n---\n") {
        let mut value: Value = serde_saphyr::from_str(doc).unwrap();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match (kind.as_str(), name.as_str()) {
            ("Tenant", "acme") => {
                value["spec"]["providers"] = json!([{"name": "local", "type": "openai",
                    "baseUrl": mock.base_url(), "timeoutMs": 5000}]);
            }
            ("Tool", "lookup-order" | "issue-refund") => {
                let url = value["spec"]["http"]["url"].as_str().unwrap().replace(
                    "https://api.acme.example",
                    &format!("http://127.0.0.1:{}", orders.port()),
                );
                value["spec"]["http"]["url"] = json!(url);
                value["spec"]["egress"] = json!({"allowHosts": ["127.0.0.1"]});
            }
            _ => {}
        }
        // JSON is YAML: each document is written back as one JSON line.
        out.push_str("---\n");
        out.push_str(&serde_json::to_string(&value).unwrap());
        out.push('\n');
    }
    assert!(
        out.contains("\"kind\":\"Workflow\""),
        "no workflow in acme.yaml"
    );
    // Another tenant, to show it does not see acme's runs.
    out.push_str(
        "---\napiVersion: agentry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: globex}\n\
         spec:\n  providers: [{name: local, type: builtin}]\n  models: [{name: small, provider: local}]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.yaml"), out).unwrap();
    dir
}

struct Setup {
    rt: DevRuntime,
    mock: MockLlm,
    orders: OrderService,
    _manifests: tempfile::TempDir,
    client: reqwest::Client,
    key: String,
}

async fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let (orders, addr) = OrderService::start().await;
    let manifests = manifests(&mock, addr);
    let rt = DevRuntime::start_with_env(
        manifests.path(),
        &[
            ("AGENTRY_WORKFLOW_LEASE_SECONDS", LEASE_SECONDS),
            (
                "AGENTRY_SECRET_ACME_API_TOKEN",
                "Bearer order-service-token",
            ),
        ],
    )
    .await
    .unwrap();
    let key = rt.key("acme").to_owned();
    Setup {
        rt,
        mock,
        orders,
        _manifests: manifests,
        client: reqwest::Client::new(),
        key,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/orchestrator{path}", self.rt.base_url)
    }

    /// Starts a `refund` run; returns the status code and the body.
    async fn start(&self, workflow: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/workflows/{workflow}/runs")))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn start_refund(&self, order: &str, wait: bool) -> Value {
        let body = if wait {
            json!({"input": {"orderId": order}, "wait": true, "waitSeconds": 30})
        } else {
            json!({"input": {"orderId": order}})
        };
        let (status, run) = self.start("refund", body).await;
        assert_eq!(status, 201, "{run}");
        run
    }

    async fn get(&self, id: &str) -> Value {
        let r = self
            .client
            .get(self.url(&format!("/runs/{id}")))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn decide(&self, id: &str, approve: bool) -> Value {
        let r = self
            .client
            .post(self.url(&format!("/runs/{id}/approvals")))
            .bearer_auth(&self.key)
            .json(&json!({"approve": approve, "comment": "checked the order",
                          "approver": "finance-desk", "wait": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls the run until it has ended (or `limit` passes) and returns it.
    async fn until_ended(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.get(id).await;
            let status = run["status"].as_str().unwrap().to_owned();
            if !["pending", "running", "waiting"].contains(&status.as_str())
                || Instant::now() >= deadline
            {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cleanup(self) {
        self.rt.cleanup().await.unwrap();
    }
}

fn step_nodes(run: &Value) -> Vec<String> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_runs_end_to_end() {
    let s = setup().await;

    // (a) A small order is refunded at once.
    let run = s.start_refund("A-40", true).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let refund_id = run["result"]["refundId"].as_str().unwrap();
    assert!(refund_id.starts_with("rf-"), "{run}");
    assert_eq!(run["result"]["message"], DEFAULT_REPLY, "{run}");
    assert_eq!(run["state"]["order"]["total"], 40.0);
    assert_eq!(s.orders.refunds("A-40"), 1);
    assert_eq!(s.orders.refund_requests("A-40"), 1);
    assert!(
        s.mock.total_requests() >= 1,
        "the reply agent asked no model"
    );
    let id = run["id"].as_str().unwrap();
    let detail = s.get(id).await;
    assert_eq!(
        step_nodes(&detail),
        ["lookup", "check", "refund", "reply", "done"],
        "{detail}"
    );
    let refund_step = &detail["steps"][2];
    assert_eq!(refund_step["kind"], "tool");
    assert_eq!(refund_step["status"], "succeeded");
    assert_eq!(refund_step["attempts"], 1);
    assert_eq!(refund_step["output"]["id"], refund_id);
    // The tool call carried the step's idempotency key: <run>:<node>:<visit>.
    assert_eq!(
        s.orders.keys(),
        [Some(format!("{id}:refund:1"))],
        "refund requests' Idempotency-Key"
    );

    // (b) A large order waits for a person; approved, it is refunded once.
    let run = s.start_refund("A-250", true).await;
    assert_eq!(run["status"], "waiting", "{run}");
    assert_eq!(run["wait"]["kind"], "approval", "{run}");
    assert_eq!(s.orders.refunds("A-250"), 0, "refunded before the approval");
    let id = run["id"].as_str().unwrap().to_owned();
    let run = s.decide(&id, true).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        run["result"]["refundId"]
            .as_str()
            .unwrap()
            .starts_with("rf-")
    );
    assert_eq!(s.orders.refunds("A-250"), 1);
    let detail = s.get(&id).await;
    assert_eq!(
        step_nodes(&detail),
        [
            "lookup", "check", "approve", "approve", "refund", "reply", "done"
        ],
        "{detail}"
    );
    // Deciding again is a conflict: the run waits for nothing.
    let r = s
        .client
        .post(s.url(&format!("/runs/{id}/approvals")))
        .bearer_auth(&s.key)
        .json(&json!({"approve": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // (c) Denied, a large order is never refunded.
    let run = s.start_refund("B-999", true).await;
    assert_eq!(run["status"], "waiting", "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let run = s.decide(&id, false).await;
    assert_eq!(run["status"], "denied", "{run}");
    assert!(run["result"].is_null(), "{run}");
    assert_eq!(s.orders.refunds("B-999"), 0);
    assert_eq!(s.orders.refund_requests("B-999"), 0);

    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_steps_stream_over_sse() {
    let s = setup().await;

    // (e) Invalid input names the field; an unknown workflow is not found.
    let (status, body) = s
        .start("refund", json!({"input": {"orderId": "no spaces allowed"}}))
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("orderId"), "{body}");
    let (status, body) = s.start("refund", json!({"input": {"reason": "x"}})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("orderId"),
        "{body}"
    );
    let (status, body) = s
        .start("no-such-workflow", json!({"input": {"orderId": "A-1"}}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s
        .start(
            "refund",
            json!({"input": {"orderId": "A-1"}, "waitSeconds": 5}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = s.start("refund", json!({"inputs": {}})).await;
    assert!((400..500).contains(&status), "unknown field: {status}");
    assert_eq!(s.orders.inner.lock().unwrap().lookups, 0);

    // (f) The events of a run: every step, then its final status.
    let run = s.start_refund("C-12", false).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let r = s
        .client
        .get(s.url(&format!("/runs/{id}/events")))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(is_event_stream(&r), "{:?}", r.headers());
    // The stream ends after the run ends.
    let body = tokio::time::timeout(Duration::from_secs(30), r.text())
        .await
        .expect("the event stream did not end with the run")
        .unwrap();
    let events = sse_events(&body).unwrap();
    let steps: Vec<&str> = events
        .iter()
        .filter(|(n, _)| *n == "step")
        .map(|(_, d)| d["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["lookup", "check", "refund", "reply", "done"],
        "{body}"
    );
    let (last, run) = events.last().unwrap();
    assert_eq!(*last, "status", "{body}");
    assert_eq!(run["status"], "succeeded", "{body}");
    assert!(run["result"]["refundId"].is_string(), "{body}");

    // Another tenant does not see the run.
    let other = s.rt.key("globex").to_owned();
    assert!(!other.is_empty(), "no key for globex");
    let r = s
        .client
        .get(s.url(&format!("/runs/{id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_a_crash_during_the_refund_without_refunding_twice() {
    let mut s = setup().await;
    let order = "K-50";
    s.orders.slow_on_first_refund(order);

    // (d) Kill the process while the refund call is in flight.
    let run = s.start_refund(order, false).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.orders.refund_requests(order) == 0 {
        assert!(Instant::now() < deadline, "the refund was never requested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.rt.kill().await.unwrap();
    assert_eq!(
        s.orders.refunds(order),
        1,
        "the effect is applied before the answer"
    );

    // A new process on the same database takes the run over once its lease expires.
    s.restart().await;
    let run = s.until_ended(&id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["claims"].as_i64().unwrap() >= 2, "{run}");
    // The replay sent the same key; the service applied the refund once.
    assert!(s.orders.refund_requests(order) >= 2);
    assert_eq!(s.orders.refunds(order), 1);
    let keys: HashSet<_> = s.orders.keys().into_iter().collect();
    assert_eq!(keys, HashSet::from([Some(format!("{id}:refund:1"))]));
    let refund_id = run["result"]["refundId"].as_str().unwrap();
    assert!(
        s.orders.inner.lock().unwrap().refunds[order].contains(refund_id),
        "{run}"
    );
    assert_eq!(
        step_nodes(&run),
        ["lookup", "check", "refund", "reply", "done"],
        "{run}"
    );

    s.cleanup().await;
}

impl Setup {
    /// Starts the process again on the same database, role and state.
    async fn restart(&mut self) {
        self.rt.launch().await.unwrap();
        self.key = self.rt.key("acme").to_owned();
    }
}
