//! `GET /api/v1/audit` against real PostgreSQL: filters, cursor pagination through every page,
//! tenant isolation, and 422 errors that name the parameter.

#![allow(
    clippy::expect_used,
    reason = "helpers of tests: a failed step fails the test with its message"
)]

mod events_support;

use std::sync::Arc;

use agentry_runtime::billing::Budgets;
use agentry_runtime::db::Db;
use agentry_runtime::events::audit::AuditPage;
use agentry_runtime::events::{self, NewEvent};
use agentry_runtime::gateway::auth::Authenticator;
use agentry_runtime::gateway::limits::Limiter;
use agentry_runtime::gateway::{Caller, Principal, Scope};
use agentry_runtime::metrics::Metrics;
use agentry_runtime::state::{AppState, Shared};
use agentry_runtime::tenancy::TenantId;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use events_support::{TestDb, registry, unique};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

fn state(db: &Db, tenants: Arc<agentry_runtime::bundles::TenantRegistry>) -> AppState {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    AppState::new(Shared {
        auth: Authenticator::new(db.clone(), http.clone()),
        limiter: Limiter::new(4),
        budgets: Arc::new(Budgets::new(db.clone(), "test".to_owned())),
        usage: agentry_runtime::billing::UsageWriter::spawn(db.clone(), Default::default()),
        metrics: Arc::new(Metrics::new()),
        llm: Arc::new(agentry_runtime::llm::LlmGateway::new(
            http.clone(),
            agentry_runtime::llm::LlmConfig::default(),
        )),
        tools: Arc::new(agentry_runtime::tools::ToolRuntime::new(
            agentry_runtime::tools::ToolSettings::default(),
            Arc::new(Metrics::new()),
        )),
        tool_secrets: Arc::new(agentry_runtime::tools::StaticSecrets::new()),
        nats: None,
        http,
        tenants,
        db: db.clone(),
        shutdown: CancellationToken::new(),
        dev_mode: true,
        runs: Default::default(),
    })
}

/// The audit routes with `caller` already authenticated (authentication is tested elsewhere).
fn app(state: &AppState, caller: Caller) -> Router {
    let (router, _openapi) = OpenApiRouter::new()
        .merge(events::audit::router())
        .split_for_parts();
    router
        .layer(axum::Extension(caller))
        .with_state(state.clone())
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

/// Every page of `uri` (which has no cursor yet), following `nextCursor`.
async fn all_pages(app: &Router, uri: &str) -> (Vec<Uuid>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    let mut cursor: Option<String> = None;
    loop {
        let sep = if uri.contains('?') { '&' } else { '?' };
        let page_uri = match &cursor {
            Some(c) => format!("{uri}{sep}cursor={c}"),
            None => uri.to_owned(),
        };
        let (status, body) = get(app, &page_uri).await;
        assert_eq!(status, StatusCode::OK, "{page_uri}: {body}");
        let page: AuditPage = serde_json::from_value(body).expect("page");
        pages += 1;
        ids.extend(page.items.iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (ids, pages),
        }
        assert!(pages < 100, "pagination does not end");
    }
}

/// Emits `count` events in one transaction; returns their ids.
async fn emit(
    db: &Db,
    tenant: TenantId,
    type_: &'static str,
    count: usize,
    subject: &str,
    actor: &str,
) -> Vec<Uuid> {
    let mut tx = db.begin(tenant).await.expect("begin");
    let mut ids = Vec::new();
    for i in 0..count {
        let event = NewEvent::new(type_, json!({"i": i}))
            .subject(subject)
            .actor(actor);
        ids.push(events::emit(&mut tx, tenant, event).await.expect("emit"));
    }
    tx.commit().await.expect("commit");
    ids
}

fn caller(tenants: &agentry_runtime::bundles::TenantRegistry, name: &str, scope: Scope) -> Caller {
    Caller {
        tenant: tenants.by_name(name).expect("tenant served"),
        principal: Principal::ApiKey { id: Uuid::new_v4() },
        scopes: vec![scope],
    }
}

fn newest_first(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids.reverse();
    ids
}

#[tokio::test]
async fn audit_filters_paginates_and_isolates_tenants() {
    let mut db = TestDb::new().await;
    let (a, b) = (format!("a{}", unique()), format!("b{}", unique()));
    let a_id = db.tenant(&a).await;
    let b_id = db.tenant(&b).await;
    let app_db = db.app(None).await;

    let created = emit(&app_db, a_id, "apikey.created", 10, "k1", "user:alice").await;
    let revoked = emit(&app_db, a_id, "apikey.revoked", 8, "k2", "key:root").await;
    let threshold = emit(&app_db, a_id, "budget.threshold", 5, "2026-01", "system").await;
    let other = emit(&app_db, b_id, "apikey.created", 7, "k1", "user:alice").await;
    let every_a: Vec<Uuid> = [created.clone(), revoked.clone(), threshold.clone()].concat();

    let tenants = registry(&[(a_id, &a), (b_id, &b)]);
    let state = state(&app_db, tenants.clone());
    let as_a = app(&state, caller(&tenants, &a, Scope::Admin));
    let as_b = app(&state, caller(&tenants, &b, Scope::Admin));

    // Every page, newest first, nothing of the other tenant.
    let (ids, pages) = all_pages(&as_a, "/api/v1/audit?limit=7").await;
    assert_eq!(ids, newest_first(every_a.clone()));
    assert_eq!(pages, 4);
    let (ids, pages) = all_pages(&as_a, "/api/v1/audit").await;
    assert_eq!((ids.len(), pages), (23, 1), "default page size is 50");
    let (ids, _) = all_pages(&as_b, "/api/v1/audit?limit=3").await;
    assert_eq!(ids, newest_first(other.clone()));

    // The envelope.
    let (_, body) = get(&as_a, "/api/v1/audit?limit=1").await;
    let item = &body["items"][0];
    assert_eq!(item["id"], json!(threshold[4]));
    assert_eq!(item["type"], "budget.threshold");
    assert_eq!(item["version"], 1);
    assert_eq!(item["tenant"], json!(a));
    assert_eq!(item["subject"], "2026-01");
    assert_eq!(item["actor"], "system");
    assert_eq!(item["data"], json!({"i": 4}));
    assert!(body["nextCursor"].is_string());

    // Filters, alone and with pagination.
    let (ids, pages) = all_pages(&as_a, "/api/v1/audit?type=apikey.revoked&limit=3").await;
    assert_eq!((ids, pages), (newest_first(revoked.clone()), 3));
    let (ids, _) = all_pages(&as_a, "/api/v1/audit?actor=user:alice").await;
    assert_eq!(ids, newest_first(created.clone()));
    let (ids, _) = all_pages(&as_a, "/api/v1/audit?subject=2026-01").await;
    assert_eq!(ids, newest_first(threshold.clone()));
    let (ids, _) = all_pages(&as_a, "/api/v1/audit?type=apikey.created&actor=key:root").await;
    assert!(ids.is_empty());

    // Time window: from the revocations (inclusive) to the thresholds (exclusive).
    let time = |id: Uuid| {
        let admin = db.admin.clone();
        async move {
            sqlx::query_scalar::<_, DateTime<Utc>>(
                "select created_at from agentry.events where id = $1",
            )
            .bind(id)
            .fetch_one(&admin)
            .await
            .expect("created_at")
            .to_rfc3339()
        }
    };
    let since = time(revoked[0]).await.replace('+', "%2B");
    let until = time(threshold[0]).await.replace('+', "%2B");
    let (ids, _) = all_pages(&as_a, &format!("/api/v1/audit?since={since}&until={until}")).await;
    assert_eq!(ids, newest_first(revoked.clone()));
    let (ids, _) = all_pages(&as_a, &format!("/api/v1/audit?since={until}&limit=2")).await;
    assert_eq!(ids, newest_first(threshold.clone()));

    // Another tenant's cursor shows nothing of that tenant.
    let (_, body) = get(&as_a, "/api/v1/audit?limit=1").await;
    let a_cursor = body["nextCursor"].as_str().expect("cursor").to_owned();
    let (_, body) = get(&as_b, &format!("/api/v1/audit?cursor={a_cursor}")).await;
    let page: AuditPage = serde_json::from_value(body).expect("page");
    assert!(
        page.items
            .iter()
            .all(|e| other.contains(&e.id) && e.tenant == b)
    );

    db.cleanup().await;
}

#[tokio::test]
async fn audit_rejects_bad_parameters_and_missing_scope() {
    let mut db = TestDb::new().await;
    let a = format!("a{}", unique());
    let a_id = db.tenant(&a).await;
    let app_db = db.app(None).await;
    emit(&app_db, a_id, "apikey.created", 1, "k1", "user:alice").await;
    let tenants = registry(&[(a_id, &a)]);
    let state = state(&app_db, tenants.clone());
    let as_admin = app(&state, caller(&tenants, &a, Scope::Admin));

    for (query, param) in [
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=AAAA", "cursor"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=many", "limit"),
        ("since=yesterday", "since"),
        ("until=2026-02-30T00:00:00Z", "until"),
        (
            "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            "until",
        ),
        ("typ=apikey.created", "typ"),
    ] {
        let (status, body) = get(&as_admin, &format!("/api/v1/audit?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(param),
            "{query}: {message:?} names {param}"
        );
    }

    let as_chat = app(&state, caller(&tenants, &a, Scope::Chat));
    let (status, body) = get(&as_chat, "/api/v1/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");

    db.cleanup().await;
}

/// Every event type the code emits (`NewEvent::new("<type>", ...)`) has a row in the catalogue
/// of docs/events.md.
#[test]
fn every_emitted_event_type_is_documented() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../docs/events.md")).expect("docs/events.md");
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut missing = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        for (at, _) in text.match_indices("NewEvent::new(") {
            let rest = text[at + "NewEvent::new(".len()..].trim_start();
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let type_ = &literal[..literal.find('"').expect("closing quote")];
            if !docs.contains(&format!("| `{type_}` |")) {
                missing.push(format!("{type_} ({})", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "event types missing from the catalogue in docs/events.md: {missing:?}"
    );
}

#[test]
fn audit_is_described_in_the_openapi_document() {
    let (_, openapi) = OpenApiRouter::<AppState>::new()
        .merge(events::audit::router())
        .split_for_parts();
    let doc = serde_json::to_value(&openapi).expect("OpenAPI as JSON");
    let get = &doc["paths"]["/api/v1/audit"]["get"];
    let names: Vec<&str> = get["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "type", "subject", "actor", "since", "until", "limit", "cursor"
        ]
    );
    assert!(get["responses"]["422"].is_object());
    assert!(doc["components"]["schemas"]["AuditPage"].is_object());
    assert!(doc["components"]["schemas"]["Envelope"].is_object());
}
