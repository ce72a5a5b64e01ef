//! Workflow runs through the HTTP API and the worker against real PostgreSQL: runs that end,
//! pause for approval and resume, bad input, cancellation, another tenant's runs, a chat that
//! starts with a workflow, and the lease that fences a replica which lost its run.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

mod auth_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentry_crds::bundle::CompiledWorkflow;
use agentry_runtime::db::DbError;
use agentry_runtime::orchestrator::journal::{CheckpointError, CheckpointWriter, PgJournal};
use agentry_runtime::orchestrator::store;
use agentry_runtime::orchestrator::{Journal, RunHub, RunStatus, StepRecord, StepStatus};
use agentry_runtime::state::AppState;
use auth_support::{Harness, bearer, call, point_order_tools, serve};
use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// The order service: totals by order id; records the idempotency key of every refund.
#[derive(Clone, Default)]
struct Orders {
    refund_keys: Arc<Mutex<Vec<String>>>,
}

async fn order_server(orders: Orders) -> SocketAddr {
    let keys = orders.refund_keys.clone();
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    let total = if id.starts_with("BIG") { 250.0 } else { 42.5 };
                    axum::Json(json!({"order": {"id": id, "total": total}}))
                },
            ),
        )
        .route(
            "/orders/{id}/refunds",
            post(move |headers: HeaderMap| {
                let keys = keys.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    keys.lock().push(key);
                    axum::Json(json!({"refund": {"id": "R-77"}}))
                }
            }),
        );
    serve(app).await
}

/// A refund workflow without the agent step (the agent loop is tested elsewhere).
fn refund_workflow() -> CompiledWorkflow {
    let nodes: Value = json!({
        "lookup": {"id": "lookup", "tool": {"name": "lookup-order", "args": {"orderId": "{{ input.orderId }}"}},
                   "output": "order", "next": "check"},
        "check": {"id": "check", "branch": [
            {"when": "state.order.total <= 100.0", "next": "refund"},
            {"when": "state.order.total > 100.0", "next": "approve"}]},
        "approve": {"id": "approve", "approval": {"message": "Refund {{ input.orderId }}?"}, "next": "refund"},
        "refund": {"id": "refund", "tool": {"name": "issue-refund", "args": {"orderId": "{{ input.orderId }}"}},
                   "output": "refund", "next": "done"},
        "done": {"id": "done", "end": {"result": {"refundId": "{{ state.refund.id }}", "message": "refunded {{ input.orderId }}"}}}
    });
    serde_json::from_value(json!({
        "name": "refund-now", "inputSchema": {"type": "object", "required": ["orderId"],
            "properties": {"orderId": {"type": "string", "pattern": "^[A-Z0-9-]+$"}}},
        "start": "lookup", "maxSteps": 20, "timeoutSeconds": 3600, "nodes": nodes, "revision": "t1"
    }))
    .unwrap()
}

struct Setup {
    h: Harness,
    app: Router,
    state: AppState,
    acme: String,
    globex: String,
    orders: Orders,
}

async fn setup(admin: PgPool, chat_workflow: bool) -> Setup {
    let orders = Orders::default();
    let addr = order_server(orders.clone()).await;
    let mut h = Harness::new(admin).await;
    let acme = h.bundles.get_mut("acme").unwrap();
    point_order_tools(acme, addr);
    acme.workflows
        .insert("refund-now".into(), refund_workflow());
    if chat_workflow {
        acme.tenant.default_agent = None;
        let greet: CompiledWorkflow = serde_json::from_value(json!({
            "name": "greet", "inputSchema": {"type": "object", "required": ["message"]},
            "start": "say", "maxSteps": 5, "timeoutSeconds": 60, "revision": "g1",
            "nodes": {"say": {"id": "say", "transform": {"template": {
                "message": "You said: {{ input.message }}"}}}}
        }))
        .unwrap();
        acme.workflows.insert("greet".into(), greet);
        acme.tenant.default_workflow = Some("greet".into());
    }
    acme.hash = acme.content_hash();
    let db = h.shared_db().await;
    let (app, state) = h.app(db, &["acme", "globex"], true);
    tokio::spawn(agentry_runtime::orchestrator::worker::run(state.clone()));
    let (_, acme) = h.insert_key("acme", &["workflows", "chat"]).await;
    let (_, globex) = h.insert_key("globex", &["workflows"]).await;
    Setup {
        h,
        app,
        state,
        acme,
        globex,
        orders,
    }
}

impl Setup {
    async fn send(
        &self,
        method: Method,
        key: &str,
        uri: &str,
        body: Option<Value>,
    ) -> auth_support::Answer {
        let auth = bearer(key);
        call(&self.app, method, uri, &[("authorization", &auth)], body).await
    }

    async fn start(&self, order: &str) -> auth_support::Answer {
        self.send(
            Method::POST,
            &self.acme,
            "/api/v1/orchestrator/workflows/refund-now/runs",
            Some(json!({"input": {"orderId": order}, "wait": true, "waitSeconds": 20})),
        )
        .await
    }

    async fn finish(self) {
        self.state.shutdown.cancel();
        self.h.cleanup().await;
    }
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_small_refund_runs_to_the_end_with_an_idempotency_key(admin: PgPool) {
    let s = setup(admin, false).await;
    let run = s.start("A-1").await;
    assert_eq!(run.status, StatusCode::CREATED, "{}", run.body);
    assert_eq!(run.body["status"], "succeeded", "{}", run.body);
    assert_eq!(run.body["result"]["refundId"], "R-77");
    let id = run.body["id"].as_str().unwrap();
    assert_eq!(
        *s.orders.refund_keys.lock(),
        [format!("{id}:refund:1")],
        "one refund, keyed by run, node and visit"
    );
    let detail = s
        .send(
            Method::GET,
            &s.acme,
            &format!("/api/v1/orchestrator/runs/{id}"),
            None,
        )
        .await;
    let nodes: Vec<&str> = detail.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["lookup", "check", "refund", "done"]);
    let list = s
        .send(
            Method::GET,
            &s.acme,
            "/api/v1/orchestrator/runs?status=succeeded",
            None,
        )
        .await;
    assert_eq!(list.body["runs"][0]["id"], id);
    s.finish().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_large_refund_waits_for_approval_then_resumes_or_ends(admin: PgPool) {
    let s = setup(admin, false).await;
    for (approve, status, refunds) in [(false, "denied", 0), (true, "succeeded", 1)] {
        let run = s.start("BIG-1").await;
        assert_eq!(run.body["status"], "waiting", "{}", run.body);
        assert_eq!(run.body["wait"]["kind"], "approval");
        assert_eq!(run.body["wait"]["message"], "Refund BIG-1?");
        let id = run.body["id"].as_str().unwrap();
        let decided = s
            .send(
                Method::POST,
                &s.acme,
                &format!("/api/v1/orchestrator/runs/{id}/approvals"),
                Some(
                    json!({"approve": approve, "comment": "ok", "approver": "alice", "wait": true}),
                ),
            )
            .await;
        assert_eq!(decided.status, StatusCode::OK, "{}", decided.body);
        assert_eq!(decided.body["status"], status, "{}", decided.body);
        assert_eq!(s.orders.refund_keys.lock().len(), refunds);
        let again = s
            .send(
                Method::POST,
                &s.acme,
                &format!("/api/v1/orchestrator/runs/{id}/approvals"),
                Some(json!({"approve": true})),
            )
            .await;
        again.error(StatusCode::CONFLICT, "conflict");
    }
    s.finish().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn bad_input_unknown_workflows_and_other_tenants_are_refused(admin: PgPool) {
    let s = setup(admin, false).await;
    let bad = s
        .send(
            Method::POST,
            &s.acme,
            "/api/v1/orchestrator/workflows/refund-now/runs",
            Some(json!({"input": {"orderId": "no spaces allowed"}})),
        )
        .await;
    let message = bad.error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert!(message.contains("input.orderId"), "{message}");
    let unknown = s
        .send(
            Method::POST,
            &s.acme,
            "/api/v1/orchestrator/workflows/nope/runs",
            Some(json!({"input": {}})),
        )
        .await;
    unknown.error(StatusCode::NOT_FOUND, "not_found");

    let run = s.start("BIG-2").await;
    let id = run.body["id"].as_str().unwrap();
    for (method, uri, body) in [
        (Method::GET, format!("/api/v1/orchestrator/runs/{id}"), None),
        (
            Method::POST,
            format!("/api/v1/orchestrator/runs/{id}/approvals"),
            Some(json!({"approve": true})),
        ),
        (
            Method::POST,
            format!("/api/v1/orchestrator/runs/{id}/cancel"),
            None,
        ),
    ] {
        let answer = s.send(method, &s.globex, &uri, body).await;
        answer.error(StatusCode::NOT_FOUND, "not_found");
    }
    let theirs = s
        .send(Method::GET, &s.globex, "/api/v1/orchestrator/runs", None)
        .await;
    assert_eq!(theirs.body["runs"], json!([]));

    let cancelled = s
        .send(
            Method::POST,
            &s.acme,
            &format!("/api/v1/orchestrator/runs/{id}/cancel"),
            Some(json!({"reason": "customer withdrew"})),
        )
        .await;
    assert_eq!(cancelled.body["status"], "cancelled", "{}", cancelled.body);
    let twice = s
        .send(
            Method::POST,
            &s.acme,
            &format!("/api/v1/orchestrator/runs/{id}/cancel"),
            None,
        )
        .await;
    twice.error(StatusCode::CONFLICT, "conflict");
    s.finish().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_chat_can_start_with_a_workflow(admin: PgPool) {
    let s = setup(admin, true).await;
    let conversation = s
        .send(
            Method::POST,
            &s.acme,
            "/api/v1/chat/conversations",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        conversation.status,
        StatusCode::CREATED,
        "{}",
        conversation.body
    );
    assert_eq!(conversation.body["workflow"], "greet");
    let id = conversation.body["id"].as_str().unwrap();
    let answer = s
        .send(
            Method::POST,
            &s.acme,
            &format!("/api/v1/chat/conversations/{id}/messages"),
            Some(json!({"content": "refund A-9 please"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["run"]["status"], "succeeded");
    assert_eq!(
        answer.body["message"]["content"],
        "You said: refund A-9 please"
    );
    let stored = s
        .send(
            Method::GET,
            &s.acme,
            &format!("/api/v1/chat/conversations/{id}"),
            None,
        )
        .await;
    let roles: Vec<&str> = stored.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    s.finish().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_replica_that_lost_its_lease_cannot_checkpoint(admin: PgPool) {
    let mut s = setup(admin.clone(), false).await;
    // Stop this setup's worker so that the test claims by hand.
    s.state.shutdown.cancel();
    let tenant = s.h.id("acme");
    let mut run = agentry_runtime::orchestrator::Run::new(
        Uuid::now_v7(),
        refund_workflow(),
        json!({"orderId": "A-2"}),
        json!({}),
        chrono::Utc::now(),
    );
    let principal = store::StoredPrincipal::User {
        subject: "u1".into(),
    };
    store::create(&s.state.db, tenant, &run, "user:u1", &principal, None)
        .await
        .unwrap();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let lease = Duration::from_secs(30);
    let claimed = store::claim(&s.state.db, tenant, first, lease, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store::claim(&s.state.db, tenant, second, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a leased run is not claimed twice"
    );
    // The first replica stalls past its lease; the second takes the run over.
    sqlx::query("update agentry.workflow_runs set lease_until = now() - interval '1 second'")
        .execute(&admin)
        .await
        .unwrap();
    let taken = store::claim(&s.state.db, tenant, second, lease, 10)
        .await
        .unwrap();
    assert_eq!(taken[0].claims, 2);
    run.status = RunStatus::Running;
    let hub = RunHub::default();
    // The checkpoints go through tenant roles: one statement in autocommit (the shared role
    // of the other tests takes the transaction path).
    let acme_writer = CheckpointWriter::spawn(s.h.tenant_db("acme").await);
    let globex_writer = CheckpointWriter::spawn(s.h.tenant_db("globex").await);
    let mut stale = PgJournal {
        writer: acme_writer.queue(),
        tenant,
        tenant_name: "acme",
        owner: first,
        hub: &hub,
        metrics: None,
        actor: "user:u1".into(),
    };
    let step = StepRecord {
        seq: 1,
        node: "lookup".into(),
        kind: "tool".into(),
        visit: 1,
        parent: None,
        status: StepStatus::Succeeded,
        attempts: 1,
        input: Some(json!({"orderId": "A-1"})),
        output: Some(json!({"total": 20})),
        error: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    };
    let written = |table: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "select count(*) from agentry.{table} where {}",
                if table == "events" {
                    "type like 'workflow.step.%' and subject = $1::text"
                } else {
                    "run_id = $1"
                }
            )))
            .bind(run.id)
            .fetch_one(&admin)
            .await
            .unwrap()
        }
    };
    assert!(matches!(
        stale.checkpoint(&run, std::slice::from_ref(&step)).await,
        Err(CheckpointError::LeaseLost)
    ));
    assert_eq!(
        written("workflow_steps").await,
        0,
        "a stale replica writes no step"
    );
    assert_eq!(written("events").await, 0, "nor its event");
    let mut other_tenant = PgJournal {
        writer: globex_writer.queue(),
        owner: second,
        ..stale
    };
    assert!(
        matches!(
            other_tenant
                .checkpoint(&run, std::slice::from_ref(&step))
                .await,
            Err(CheckpointError::Write(e)) if matches!(*e, DbError::WrongTenant { .. })
        ),
        "a tenant role is not used for another tenant"
    );
    other_tenant.tenant = s.h.id("globex");
    assert!(
        matches!(
            other_tenant
                .checkpoint(&run, std::slice::from_ref(&step))
                .await,
            Err(CheckpointError::LeaseLost)
        ),
        "another tenant's role does not see the run, whatever owner it names"
    );
    assert_eq!(written("workflow_steps").await, 0);
    let mut current = PgJournal {
        writer: acme_writer.queue(),
        tenant,
        owner: second,
        ..other_tenant
    };
    current.checkpoint(&run, &[step]).await.unwrap();
    assert_eq!(written("workflow_steps").await, 1);
    assert_eq!(written("events").await, 1);
    let stored = store::steps(&s.state.db, tenant, run.id, 0).await.unwrap();
    assert_eq!(stored[0].output, Some(json!({"total": 20})));
    assert_eq!(stored[0].input, Some(json!({"orderId": "A-1"})));
    assert!(
        !store::heartbeat(&s.state.db, tenant, run.id, first, lease)
            .await
            .unwrap()
    );
    assert!(
        store::heartbeat(&s.state.db, tenant, run.id, second, lease)
            .await
            .unwrap()
    );
    s.h.cleanup().await;
}

fn step_record(seq: u32, node: &str) -> StepRecord {
    StepRecord {
        seq,
        node: node.into(),
        kind: "tool".into(),
        visit: 1,
        parent: None,
        status: StepStatus::Succeeded,
        attempts: 1,
        input: None,
        output: Some(json!({"ok": true})),
        error: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    }
}

/// Checkpoints of concurrent runs share the writer's statements, yet each keeps its own
/// outcome: a run whose lease is gone and a checkpoint the database refuses fail alone.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn concurrent_checkpoints_land_or_fail_each_on_their_own(admin: PgPool) {
    let mut h = Harness::new(admin.clone()).await;
    let tenant = h.id("acme");
    let db = h.tenant_db("acme").await;
    let principal = store::StoredPrincipal::User {
        subject: "u1".into(),
    };
    let mut runs = Vec::new();
    for _ in 0..4 {
        let run = agentry_runtime::orchestrator::Run::new(
            Uuid::now_v7(),
            refund_workflow(),
            json!({"orderId": "A-3"}),
            json!({}),
            chrono::Utc::now(),
        );
        store::create(&db, tenant, &run, "user:u1", &principal, None)
            .await
            .unwrap();
        runs.push(run);
    }
    let owner = Uuid::new_v4();
    let claimed = store::claim(&db, tenant, owner, Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for run in &mut runs {
        run.status = RunStatus::Running;
    }
    // Another replica took run 1 over.
    sqlx::query("update agentry.workflow_runs set lease_owner = $1 where id = $2")
        .bind(Uuid::new_v4())
        .bind(runs[1].id)
        .execute(&admin)
        .await
        .unwrap();
    let writer = CheckpointWriter::spawn(db.clone());
    let hub = RunHub::default();
    let journal = |_: usize| PgJournal {
        writer: writer.queue(),
        tenant,
        tenant_name: "acme",
        owner,
        hub: &hub,
        metrics: None,
        actor: "user:u1".into(),
    };
    let (mut j0, mut j1, mut j2, mut j3) = (journal(0), journal(1), journal(2), journal(3));
    j2.checkpoint(&runs[2], &[step_record(1, "lookup")])
        .await
        .unwrap();
    // Run 2 checkpoints step 1 again: the step's primary key refuses it.
    let steps = [
        step_record(1, "lookup"),
        step_record(1, "lookup"),
        step_record(1, "lookup"),
        step_record(1, "lookup"),
    ];
    let (r0, r1, r2, r3) = tokio::join!(
        j0.checkpoint(&runs[0], &steps[0..1]),
        j1.checkpoint(&runs[1], &steps[1..2]),
        j2.checkpoint(&runs[2], &steps[2..3]),
        j3.checkpoint(&runs[3], &steps[3..4]),
    );
    assert!(r0.is_ok(), "{r0:?}");
    assert!(matches!(r1, Err(CheckpointError::LeaseLost)), "{r1:?}");
    assert!(matches!(r2, Err(CheckpointError::Write(_))), "{r2:?}");
    assert!(r3.is_ok(), "{r3:?}");
    let stored: Vec<(Uuid, i64)> = sqlx::query_as(
        "select run_id, count(*) from agentry.workflow_steps where tenant_id = $1
         group by run_id",
    )
    .bind(tenant.0)
    .fetch_all(&admin)
    .await
    .unwrap();
    let count = |run: usize| {
        stored
            .iter()
            .find(|(id, _)| *id == runs[run].id)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        (count(0), count(1), count(2), count(3)),
        (1, 0, 1, 1),
        "landed checkpoints wrote their step, failed ones nothing"
    );
    let events: i64 = sqlx::query_scalar(
        "select count(*) from agentry.events e join agentry.event_outbox o
           on o.tenant_id = e.tenant_id and o.event_id = e.id
         where e.tenant_id = $1 and e.type = 'workflow.step.completed'",
    )
    .bind(tenant.0)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(events, 3, "one event with its outbox entry per landed step");
    drop((j0, j1, j2, j3));
    writer.close().await;
    h.cleanup().await;
}
