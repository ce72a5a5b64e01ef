//! The transactional outbox against real PostgreSQL and NATS: every committed event reaches
//! JetStream exactly once (by message id) across a relay crash and a NATS outage, rolled-back
//! events never do, and application roles cannot rewrite the audit log.

#![allow(
    clippy::expect_used,
    reason = "helpers of tests: a failed step fails the test with its message"
)]

mod events_support;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentry_runtime::events::{self, NewEvent, Relay};
use agentry_runtime::metrics::{Metrics, TenantLabels};
use agentry_runtime::tenancy::TenantId;
use events_support::{
    Proxy, Received, TestDb, TestStream, emit_batch, jetstream, nats_url, read_stream, registry,
    unique, wait_for,
};
use serde_json::json;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Checks that the stream holds exactly `committed`, each once, in id order, under the
/// tenant's subjects, and none of `rolled_back`.
fn assert_exactly_once(
    received: &[Received],
    committed: &[Uuid],
    rolled_back: &[Uuid],
    subject_prefix: &str,
) {
    let ids: Vec<String> = received.iter().map(|r| r.msg_id.clone()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a message id appears twice");
    let expected: BTreeSet<String> = committed.iter().map(Uuid::to_string).collect();
    let got: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        got, expected,
        "the stream does not hold exactly the committed events"
    );
    assert_eq!(received.len(), committed.len());
    for id in rolled_back {
        assert!(
            !got.contains(&id.to_string()),
            "rolled-back event {id} was published"
        );
    }
    for r in received {
        assert_eq!(
            r.envelope.id.to_string(),
            r.msg_id,
            "Nats-Msg-Id is the event id"
        );
        assert_eq!(
            r.subject,
            format!(
                "{subject_prefix}.{}.{}",
                r.envelope.tenant, r.envelope.type_
            )
        );
    }
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| Uuid::parse_str(id).expect("uuid"));
    assert_eq!(
        ids, sorted,
        "events committed before the relay ran leave in id order"
    );
}

fn published(metrics: &Metrics, tenant: &str) -> u64 {
    metrics
        .events_published
        .get_or_create(&TenantLabels {
            tenant: tenant.to_owned(),
        })
        .get()
}

fn gauge(metrics: &Metrics, tenant: &str) -> i64 {
    metrics
        .outbox_pending
        .get_or_create(&TenantLabels {
            tenant: tenant.to_owned(),
        })
        .get()
}

/// Emits 200 committed events in 40 transactions and 50 more in 10 rolled-back ones.
async fn emit_mixed(
    db: &agentry_runtime::db::Db,
    tenant: TenantId,
    type_: &'static str,
    transactions: usize,
) -> (Vec<Uuid>, Vec<Uuid>) {
    let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
    for t in 0..transactions {
        if t % 5 == 2 {
            rolled_back.extend(emit_batch(db, tenant, type_, 5, false).await);
        } else {
            committed.extend(emit_batch(db, tenant, type_, 5, true).await);
        }
    }
    (committed, rolled_back)
}

#[tokio::test]
async fn relay_killed_between_publish_and_delete_republishes_without_duplicates() {
    let mut db = TestDb::new().await;
    let name = format!("t{}", unique());
    let tenant = db.tenant(&name).await;
    let app = db.app(None).await;
    let (committed, rolled_back) = emit_mixed(&app, tenant, "test.happened", 50).await;
    assert_eq!(committed.len(), 200);
    assert_eq!(
        db.outbox_len().await,
        200,
        "rolled-back events leave no outbox row"
    );

    let js = jetstream().await;
    let stream = TestStream::unique();
    let tenants = registry(&[(tenant, &name)]);

    // Hold the outbox in SHARE mode: the relay can select and lock its batch and publish it,
    // but its DELETE waits. Killing it then is a crash between publish and delete.
    let mut blocker = sqlx::PgConnection::connect_with(&db.admin.connect_options())
        .await
        .expect("connect");
    let mut block = blocker.begin().await.expect("begin");
    sqlx::query("lock table agentry.event_outbox in share mode")
        .execute(&mut *block)
        .await
        .expect("lock");

    let first_metrics = Arc::new(Metrics::new());
    let first = Relay::new(
        app.clone(),
        js.clone(),
        tenants.clone(),
        first_metrics.clone(),
    )
    .with_config(stream.relay_config(10));
    let first = tokio::spawn(first.run(CancellationToken::new()));
    wait_for(
        "the first batch in JetStream",
        Duration::from_secs(30),
        || async { stream.stored(&js).await >= 10 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stream.stored(&js).await,
        10,
        "the relay is stuck before its delete"
    );
    first.abort();
    assert!(first.await.is_err_and(|e| e.is_cancelled()));
    block.commit().await.expect("unlock");
    assert_eq!(
        db.outbox_len().await,
        200,
        "the killed batch never left the outbox"
    );
    assert_eq!(published(&first_metrics, &name), 0);

    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let second = Relay::new(app.clone(), js.clone(), tenants.clone(), metrics.clone())
        .with_config(stream.relay_config(10));
    let second = tokio::spawn(second.run(shutdown.clone()));
    wait_for("an empty outbox", Duration::from_secs(60), || async {
        db.outbox_len().await == 0
    })
    .await;
    wait_for(
        "the pending gauge at zero",
        Duration::from_secs(10),
        || async { gauge(&metrics, &name) == 0 },
    )
    .await;
    shutdown.cancel();
    second.await.expect("relay stops on shutdown");

    let received = read_stream(&js, &stream.name).await;
    assert_exactly_once(&received, &committed, &rolled_back, &stream.prefix);
    // The restarted relay sent all 200; JetStream flagged the 10 it already had as duplicates.
    assert_eq!(published(&metrics, &name), 190);

    db.cleanup().await;
}

#[tokio::test]
async fn nats_outage_mid_stream_loses_and_duplicates_nothing() {
    let mut db = TestDb::new().await;
    let name = format!("t{}", unique());
    let tenant = db.tenant(&name).await;
    let app = db.app(None).await;
    let (mut committed, mut rolled_back) = emit_mixed(&app, tenant, "test.before", 25).await;
    assert_eq!(committed.len(), 100);

    let js = jetstream().await;
    let stream = TestStream::unique();
    let proxy = Proxy::start(nats_url()).await;
    // Cut NATS off in the middle of the fourth batch: JetStream stores what it received, the
    // acks are lost, the relay's transaction rolls back.
    proxy.cut_after_publishes(35);
    let relay_client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(proxy.addr.to_string())
        .await
        .expect("connect through the proxy");
    let relay_js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(relay_client);
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        app.clone(),
        relay_js,
        registry(&[(tenant, &name)]),
        Arc::new(Metrics::new()),
    )
    .with_config(stream.relay_config(10));
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    wait_for("the outage", Duration::from_secs(30), || async {
        proxy.is_cut()
    })
    .await;
    let (more, more_rolled_back) = emit_mixed(&app, tenant, "test.during", 25).await;
    committed.extend(more);
    rolled_back.extend(more_rolled_back);
    // The relay keeps failing while NATS is away; every event waits in the outbox.
    wait_for("a failed attempt", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, Option<i32>>("select max(attempts) from agentry.event_outbox")
            .fetch_one(&db.admin)
            .await
            .expect("attempts")
            .is_some_and(|a| a >= 2)
    })
    .await;
    let stored = stream.stored(&js).await;
    assert!(
        (30..=40).contains(&stored),
        "{stored} messages stored before the cut"
    );
    assert!(db.outbox_len().await >= 200 - 30, "nothing left the outbox");

    proxy.restore().await;
    wait_for("an empty outbox", Duration::from_secs(60), || async {
        db.outbox_len().await == 0
    })
    .await;
    shutdown.cancel();
    relay.await.expect("relay stops on shutdown");

    let received = read_stream(&js, &stream.name).await;
    assert_exactly_once(&received, &committed, &rolled_back, &stream.prefix);

    db.cleanup().await;
}

#[tokio::test]
async fn relay_serves_each_tenant_with_envelope_and_trace_context() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut db = TestDb::new().await;
    let (acme, globex) = (format!("a{}", unique()), format!("g{}", unique()));
    let acme_id = db.tenant(&acme).await;
    let globex_id = db.tenant(&globex).await;
    let app = db.app(None).await;

    let mut tx = app.begin(acme_id).await.expect("begin");
    let plain = events::emit(
        &mut tx,
        acme_id,
        NewEvent::new("apikey.created", json!({"name": "ci"}))
            .subject("k1")
            .actor("user:alice"),
    )
    .await
    .expect("emit");
    tx.commit().await.expect("commit");
    // An event recorded inside a trace (emit stores the current traceparent).
    let traced = Uuid::now_v7();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    sqlx::query(
        "insert into agentry.events (tenant_id, id, type, version, data, traceparent)
         values ($1, $2, 'budget.threshold', 1, '{\"percent\": 80}', $3);
         ",
    )
    .bind(globex_id.0)
    .bind(traced)
    .bind(traceparent)
    .execute(&db.admin)
    .await
    .expect("insert traced event");
    sqlx::query("insert into agentry.event_outbox (tenant_id, event_id) values ($1, $2)")
        .bind(globex_id.0)
        .bind(traced)
        .execute(&db.admin)
        .await
        .expect("insert outbox row");

    let js = jetstream().await;
    let stream = TestStream::unique();
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        app.clone(),
        js.clone(),
        registry(&[(acme_id, &acme), (globex_id, &globex)]),
        metrics.clone(),
    )
    .with_config(stream.relay_config(100));
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    wait_for("an empty outbox", Duration::from_secs(30), || async {
        db.outbox_len().await == 0
    })
    .await;
    // A notification wakes the relay well before its next poll.
    let mut tx = app.begin(acme_id).await.expect("begin");
    let late = events::emit(&mut tx, acme_id, NewEvent::new("apikey.revoked", json!({})))
        .await
        .expect("emit");
    tx.commit().await.expect("commit");
    wait_for("the late event", Duration::from_secs(30), || async {
        db.outbox_len().await == 0
    })
    .await;
    shutdown.cancel();
    relay.await.expect("relay stops");

    let js_stream = js.get_stream(&stream.name).await.expect("stream");
    let config = &js_stream.cached_info().config;
    assert_eq!(config.subjects, vec![format!("{}.>", stream.prefix)]);
    assert_eq!(config.duplicate_window, Duration::from_secs(600));

    let received = read_stream(&js, &stream.name).await;
    assert_eq!(received.len(), 3);
    let by_id = |id: Uuid| {
        received
            .iter()
            .find(|r| r.envelope.id == id)
            .expect("event in the stream")
    };
    let p = by_id(plain);
    assert_eq!(
        p.subject,
        format!("{}.{acme}.apikey.created", stream.prefix)
    );
    assert_eq!(p.envelope.tenant, acme);
    assert_eq!(p.envelope.type_, "apikey.created");
    assert_eq!(p.envelope.version, 1);
    assert_eq!(p.envelope.subject.as_deref(), Some("k1"));
    assert_eq!(p.envelope.actor.as_deref(), Some("user:alice"));
    assert_eq!(p.envelope.data, json!({"name": "ci"}));
    assert_eq!(
        p.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(!p.headers.contains_key("traceparent"));
    let body: serde_json::Value = serde_json::to_value(&p.envelope).expect("envelope as JSON");
    assert_eq!(body["type"], "apikey.created");

    let t = by_id(traced);
    assert_eq!(
        t.subject,
        format!("{}.{globex}.budget.threshold", stream.prefix)
    );
    assert_eq!(t.envelope.tenant, globex);
    let header = t.headers.get("traceparent").expect("traceparent header");
    assert_eq!(
        &header[3..35],
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "same trace"
    );
    // A consumer continues the trace from the message headers.
    use opentelemetry::trace::TraceContextExt as _;
    let cx = events::trace_context(t.raw_headers.as_ref());
    assert_eq!(
        cx.span().span_context().trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(by_id(late).envelope.type_, "apikey.revoked");
    assert_eq!(published(&metrics, &acme), 2);
    assert_eq!(published(&metrics, &globex), 1);

    db.cleanup().await;
}

#[tokio::test]
async fn app_roles_cannot_rewrite_the_audit_log() {
    let mut db = TestDb::new().await;
    let (mine, theirs) = (format!("m{}", unique()), format!("o{}", unique()));
    let mine = db.tenant(&mine).await;
    let theirs = db.tenant(&theirs).await;
    let app = db.app(Some(mine)).await;
    let own = emit_batch(&app, mine, "test.happened", 2, true).await;
    // The other tenant's event, written by the administrator.
    let mut admin = db.admin.acquire().await.expect("admin connection");
    events::emit(
        &mut admin,
        theirs,
        NewEvent::new("test.happened", json!({})),
    )
    .await
    .expect("emit as admin");
    drop(admin);

    let denied = |result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, what: &str| {
        let err = result.expect_err(what);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{what}: {err}");
    };
    for (sql, what) in [
        ("update agentry.events set actor = 'forged'", "update"),
        ("delete from agentry.events", "delete"),
        ("truncate agentry.events", "truncate"),
    ] {
        let mut tx = app.begin(mine).await.expect("begin");
        denied(sqlx::query(sql).execute(&mut *tx).await, what);
    }
    // Row-level security: the role sees only its tenant's events and cannot write another's.
    let mut tx = app.begin(mine).await.expect("begin");
    let visible: Vec<Uuid> = sqlx::query_scalar("select id from agentry.events order by id")
        .fetch_all(&mut *tx)
        .await
        .expect("select");
    assert_eq!(visible, own);
    denied(
        sqlx::query(
            "insert into agentry.events (tenant_id, id, type, version, data)
             values ($1, $2, 'forged', 1, '{}')",
        )
        .bind(theirs.0)
        .bind(Uuid::now_v7())
        .execute(&mut *tx)
        .await,
        "insert for another tenant",
    );
    drop(tx);
    // Publication progress lives in the outbox, which the relay may delete from.
    let mut tx = app.begin(mine).await.expect("begin");
    let deleted = sqlx::query("delete from agentry.event_outbox")
        .execute(&mut *tx)
        .await
        .expect("delete outbox rows")
        .rows_affected();
    tx.commit().await.expect("commit");
    assert_eq!(deleted, 2, "only the own tenant's outbox rows");
    assert_eq!(db.outbox_len().await, 1);

    db.cleanup().await;
}

/// `emit` wakes the relay (a notification when its transaction commits, none when it rolls
/// back); `emit_unsignalled` never does. Listened for directly: the relay's own poll would
/// hide a missing notification.
#[tokio::test]
async fn emit_notifies_the_relay_on_commit_only() {
    let mut db = TestDb::new().await;
    let tenant = db.tenant(&format!("n{}", unique())).await;
    let app = db.app(Some(tenant)).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.admin)
        .await
        .expect("listener");
    listener
        .listen(events::relay::NOTIFY_CHANNEL)
        .await
        .expect("listen");
    let quiet = Duration::from_millis(300);

    let mut tx = app.begin(tenant).await.expect("begin");
    events::emit_unsignalled(&mut tx, tenant, NewEvent::new("test.happened", json!({})))
        .await
        .expect("emit unsignalled");
    tx.commit().await.expect("commit");
    let mut tx = app.begin(tenant).await.expect("begin");
    events::emit(&mut tx, tenant, NewEvent::new("test.happened", json!({})))
        .await
        .expect("emit, rolled back");
    tx.rollback().await.expect("rollback");
    assert!(
        tokio::time::timeout(quiet, listener.recv()).await.is_err(),
        "no notification for an unsignalled or rolled-back event"
    );

    let mut tx = app.begin(tenant).await.expect("begin");
    events::emit(&mut tx, tenant, NewEvent::new("test.happened", json!({})))
        .await
        .expect("emit");
    tx.commit().await.expect("commit");
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification after the commit")
        .expect("listener");
    assert_eq!(notification.channel(), events::relay::NOTIFY_CHANNEL);
    assert_eq!(
        db.outbox_len().await,
        2,
        "both committed events are in the outbox"
    );

    drop(listener);
    db.cleanup().await;
}

#[tokio::test]
async fn relay_recreates_a_stream_deleted_under_it() {
    let mut db = TestDb::new().await;
    let name = format!("t{}", unique());
    let tenant = db.tenant(&name).await;
    let app = db.app(None).await;
    let js = jetstream().await;
    let stream = TestStream::unique();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        app.clone(),
        js.clone(),
        registry(&[(tenant, &name)]),
        Arc::new(Metrics::new()),
    )
    .with_config(stream.relay_config(10));
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    emit_batch(&app, tenant, "test.first", 3, true).await;
    wait_for("the first events", Duration::from_secs(30), || async {
        stream.stored(&js).await == 3
    })
    .await;
    js.delete_stream(&stream.name).await.expect("delete stream");
    let second = emit_batch(&app, tenant, "test.second", 2, true).await;
    wait_for("an empty outbox", Duration::from_secs(30), || async {
        db.outbox_len().await == 0
    })
    .await;
    shutdown.cancel();
    relay.await.expect("relay stops");

    let received = read_stream(&js, &stream.name).await;
    assert_exactly_once(&received, &second, &[], &stream.prefix);

    db.cleanup().await;
}

/// Rows a plan (EXPLAIN ANALYZE, JSON) read from `relation`: each scan node's rows times its
/// loops, plus the rows its filter removed.
fn rows_read_from(plan: &serde_json::Value, relation: &str) -> f64 {
    let own = if plan["Relation Name"] == relation {
        let loops = plan["Actual Loops"].as_f64().unwrap_or(1.0);
        let rows = plan["Actual Rows"].as_f64().unwrap_or(0.0)
            + plan["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
        rows * loops
    } else {
        0.0
    };
    let children = plan["Plans"].as_array().map_or(0.0, |plans| {
        plans.iter().map(|p| rows_read_from(p, relation)).sum()
    });
    own + children
}

#[tokio::test]
async fn the_relay_reads_only_pending_events_however_long_the_history() {
    let mut db = TestDb::new().await;
    let tenant = db.tenant(&format!("h{}", unique())).await;
    let app = db.app(Some(tenant)).await;
    // An audit log of 5,000 published events (no outbox rows), then 5 pending ones.
    let history: Vec<Uuid> = (0..5_000).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "insert into agentry.events (tenant_id, id, type, version, data)
         select $1, id, 'test.history', 1, '{}' from unnest($2::uuid[]) as id",
    )
    .bind(tenant.0)
    .bind(&history)
    .execute(&db.admin)
    .await
    .expect("history");
    let mut tx = app.begin(tenant).await.expect("begin");
    for _ in 0..5 {
        events::emit_unsignalled(&mut tx, tenant, NewEvent::new("test.pending", json!({})))
            .await
            .expect("emit");
    }
    tx.commit().await.expect("commit");

    // Both statements as the relay runs them (the tenant's role, under row-level security),
    // planned for the values and generically, as a cached statement is after five runs.
    let mut tx = app.begin(tenant).await.expect("begin");
    let statements = [
        (
            "pending_batch",
            "(uuid, int8)",
            events::relay::PENDING_BATCH,
            format!("'{}', 100", tenant.0),
        ),
        (
            "pending_gauges",
            "(uuid)",
            events::relay::PENDING_GAUGES,
            format!("'{}'", tenant.0),
        ),
    ];
    for (name, types, sql, args) in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "prepare {name}{types} as {sql}"
        )))
        .execute(&mut *tx)
        .await
        .expect("prepare");
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "set local plan_cache_mode = {mode}"
            )))
            .execute(&mut *tx)
            .await
            .expect("plan mode");
            let explained: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "explain (analyze, format json) execute {name}({args})"
            )))
            .fetch_one(&mut *tx)
            .await
            .expect("explain");
            let plan = &explained[0]["Plan"];
            let read = rows_read_from(plan, "events");
            assert!(
                read <= 5.0,
                "{name} ({mode}) read {read} events for 5 pending: {plan:#}"
            );
            if *name == "pending_batch" {
                assert_eq!(
                    plan["Actual Rows"], 5,
                    "{name} ({mode}) returns the pending"
                );
            }
        }
    }
    tx.rollback().await.expect("rollback");
    db.cleanup().await;
}
