//! `/ws/chat` with a real WebSocket client against the app served on loopback, over real
//! PostgreSQL, the example tenants answered by the offline provider.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

mod auth_support;

use std::time::Duration;

use agentry_runtime::http::HttpConfig;
use agentry_runtime::realtime::RealtimeConfig;
use auth_support::{Harness, bearer, call, serve};
use axum::http::{Method, StatusCode};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Setup {
    harness: Harness,
    app: axum::Router,
    addr: std::net::SocketAddr,
    acme: String,
}

async fn setup(admin: PgPool, streams: Option<u32>) -> Setup {
    setup_with(admin, streams, HttpConfig::default()).await
}

async fn setup_with(admin: PgPool, streams: Option<u32>, config: HttpConfig) -> Setup {
    let mut h = Harness::new(admin).await;
    if let Some(cap) = streams {
        let acme = h.bundles.get_mut("acme").unwrap();
        acme.tenant.limits.concurrent_streams = Some(cap);
        acme.hash = acme.content_hash();
    }
    let db = h.shared_db().await;
    let (_, state) = h.app(db, &["acme", "globex"], true);
    let app = agentry_runtime::http::app(state, config);
    let (_, acme) = h.insert_key("acme", &["chat"]).await;
    let addr = serve(app.clone()).await;
    Setup {
        harness: h,
        app,
        addr,
        acme,
    }
}

impl Setup {
    async fn conversation(&self) -> String {
        let auth = bearer(&self.acme);
        let a = call(
            &self.app,
            Method::POST,
            "/api/v1/chat/conversations",
            &[("authorization", &auth)],
            Some(json!({})),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["id"].as_str().unwrap().to_owned()
    }

    async fn connect_with(
        &self,
        header: Option<&str>,
        protocol: Option<&str>,
    ) -> Result<Ws, WsError> {
        let mut request = format!("ws://{}/ws/chat", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(h) = header {
            request
                .headers_mut()
                .insert("authorization", h.parse().unwrap());
        }
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws)
    }

    async fn connect(&self) -> Ws {
        self.connect_with(Some(&bearer(&self.acme)), None)
            .await
            .unwrap()
    }
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON event (skipping control frames).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Events until the `done` or `error` of each conversation in `open`.
async fn until_done(ws: &mut Ws, mut open: Vec<String>) -> Vec<Value> {
    let mut events = Vec::new();
    while !open.is_empty() {
        let e = next(ws).await;
        if e["type"] == "done" || e["type"] == "error" {
            let c = e["conversationId"].as_str().unwrap_or_default().to_owned();
            open.retain(|o| *o != c);
        }
        events.push(e);
    }
    events
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_message_streams_tokens_then_done_with_usage(admin: PgPool) {
    let s = setup(admin, None).await;
    let c = s.conversation().await;
    let mut ws = s.connect().await;
    send(
        &mut ws,
        json!({"type": "message", "conversationId": c, "content": "Hello there", "id": "m1"}),
    )
    .await;
    let events = until_done(&mut ws, vec![c.clone()]).await;
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    assert_eq!(done["id"], "m1");
    assert_eq!(done["cancelled"], false);
    assert!(done["usage"]["modelCalls"].as_i64().unwrap() >= 1, "{done}");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "token")
        .inspect(|e| assert_eq!(e["conversationId"], c.as_str()))
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(!text.is_empty(), "{events:?}");
    assert_eq!(text, done["message"]["content"].as_str().unwrap());
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn auth_by_subprotocol_selects_agentry_v1_and_bad_tokens_are_refused(admin: PgPool) {
    let s = setup(admin, None).await;
    let mut request = format!("ws://{}/ws/chat", s.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("agentry.v1, agentry.bearer.{}", s.acme)
            .parse()
            .unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "agentry.v1");
    send(&mut ws, json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(next(&mut ws).await, json!({"type": "pong", "id": "p1"}));

    for (header, protocol) in [
        (Some("Bearer agk_nope"), None),
        (None, Some("agentry.v1, agentry.bearer.agk_nope")),
        (None, None),
    ] {
        match s.connect_with(header, protocol).await {
            Err(WsError::Http(r)) => assert_eq!(r.status(), StatusCode::UNAUTHORIZED),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn two_conversations_share_a_socket(admin: PgPool) {
    let s = setup(admin, None).await;
    let (a, b) = (s.conversation().await, s.conversation().await);
    let mut ws = s.connect().await;
    send(
        &mut ws,
        json!({"type": "message", "conversationId": a, "content": "Hello from a"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "message", "conversationId": b, "content": "Hello from b"}),
    )
    .await;
    let events = until_done(&mut ws, vec![a.clone(), b.clone()]).await;
    for c in [&a, &b] {
        let done: Vec<&Value> = events
            .iter()
            .filter(|e| e["conversationId"] == c.as_str() && e["type"] == "done")
            .collect();
        assert_eq!(done.len(), 1, "{events:?}");
        let text: String = events
            .iter()
            .filter(|e| e["conversationId"] == c.as_str() && e["type"] == "token")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, done[0]["message"]["content"].as_str().unwrap());
    }
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn cancel_stops_a_turn_and_reports_done_cancelled(admin: PgPool) {
    let s = setup(admin, None).await;
    let c = s.conversation().await;
    let mut ws = s.connect().await;
    // The turn cannot store its messages while this lock is held, so it is still running when
    // the cancel is read, however fast it would otherwise finish.
    let mut lock = s.harness.admin.acquire().await.unwrap();
    sqlx::raw_sql("begin; lock table agentry.messages in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"type": "message", "conversationId": c, "content": "Hello there"}),
    )
    .await;
    send(&mut ws, json!({"type": "cancel", "conversationId": c})).await;
    let events = until_done(&mut ws, vec![c.clone()]).await;
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    assert_eq!(done["cancelled"], true, "{events:?}");
    sqlx::raw_sql("rollback").execute(&mut *lock).await.unwrap();
    // Nothing of the turn follows, and a cancel with nothing running is an error.
    send(&mut ws, json!({"type": "cancel", "conversationId": c})).await;
    let e = next(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "not_running");
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn malformed_json_is_an_error_event_and_the_socket_stays_open(admin: PgPool) {
    let s = setup(admin, None).await;
    let mut ws = s.connect().await;
    ws.send(Message::text("{not json")).await.unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "bad_message");
    send(&mut ws, json!({"type": "shout"})).await;
    assert_eq!(next(&mut ws).await["code"], "bad_message");
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await, json!({"type": "pong"}));
    // An unknown conversation is an error about that conversation, not a disconnect.
    let missing = uuid::Uuid::now_v7().to_string();
    send(
        &mut ws,
        json!({"type": "message", "conversationId": missing, "content": "hi"}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert_eq!(e["conversationId"], missing.as_str());
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_tenant_stream_cap_refuses_extra_connections(admin: PgPool) {
    let s = setup(admin, Some(1)).await;
    let first = s.connect().await;
    match s.connect_with(Some(&bearer(&s.acme)), None).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // The slot frees when the first socket closes.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(ws) = s.connect_with(Some(&bearer(&s.acme)), None).await {
            again = Some(ws);
            break;
        }
    }
    assert!(again.is_some(), "the slot was not released");
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn heartbeats_keep_a_live_client_and_a_silent_one_idles_out(admin: PgPool) {
    let config = HttpConfig {
        realtime: RealtimeConfig {
            heartbeat: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(500),
            ..RealtimeConfig::default()
        },
        ..HttpConfig::default()
    };
    let s = setup_with(admin, None, config).await;

    // A client that reads answers the pings (tungstenite pongs on read) and stays open.
    let mut live = s.connect().await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(frame) = tokio::time::timeout_at(until, live.next()).await {
        match frame.unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(pings >= 5, "{pings} pings");
    send(&mut live, json!({"type": "ping"})).await;
    loop {
        if let Message::Text(t) = live.next().await.unwrap().unwrap() {
            assert_eq!(t.as_str(), r#"{"type":"pong"}"#);
            break;
        }
    }

    // A client that sends nothing (not even pongs) is closed with 1001.
    let mut silent = s.connect().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let close = loop {
        match silent.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1001);
}
