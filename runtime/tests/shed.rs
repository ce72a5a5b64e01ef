//! Load shedding: past `max_in_flight` API requests in progress, a request is answered 503
//! `overloaded` with `Retry-After` at once; health checks are not counted; a freed slot admits
//! the next request.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

mod auth_support;

use std::time::{Duration, Instant};

use agentry_runtime::http::{HttpConfig, app};
use auth_support::{Harness, bearer, call};
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt as _;

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn requests_past_the_in_flight_cap_are_shed_at_once(admin: PgPool) {
    let mut h = Harness::new(admin).await;
    let db = h.shared_db().await;
    let (_, state) = h.app(db, &["acme"], true);
    let app = app(
        state,
        HttpConfig {
            max_in_flight: 1,
            ..HttpConfig::default()
        },
    );
    let (_, key) = h.insert_key("acme", &["chat"]).await;
    let auth = bearer(&key);

    // A request whose body never ends holds the only slot.
    let (body_tx, body_rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let held = Request::post("/v1/chat/completions")
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(Body::from_stream(body_rx))
        .unwrap();
    // Its first poll passes admission (taking the slot) and stops at authentication.
    let mut held = Box::pin(app.clone().oneshot(held));
    assert!(futures::poll!(&mut held).is_pending());
    let holding = tokio::spawn(held);

    let request = Request::get("/v1/models")
        .header("authorization", &auth)
        .body(Body::empty())
        .unwrap();
    let started = Instant::now();
    let shed = app.clone().oneshot(request).await.unwrap();
    let took = started.elapsed();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        took < Duration::from_millis(500),
        "a shed request is answered without waiting ({took:?})"
    );
    assert_eq!(
        shed.headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body = axum::body::to_bytes(shed.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    // Under `/v1` in OpenAI's shape, so that OpenAI clients raise their usual error.
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 requests in progress"),
        "{body}"
    );

    // Shedding comes before authentication: a request without credentials is shed too, under
    // `/api` in Agentry's error shape.
    let anonymous = call(&app, Method::GET, "/api/v1/chat/conversations", &[], None).await;
    anonymous.error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    let health = call(&app, Method::GET, "/healthz", &[], None).await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "health checks are not counted"
    );
    let (status, metrics) = text(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "the metrics are not counted");
    assert!(
        metrics.contains(r#"agentry_limit_rejections_total{tenant="-",limit="overload"} 2"#),
        "both refusals are counted: {metrics}"
    );
    assert!(
        metrics.contains(
            r#"agentry_http_requests_total{tenant="-",route="overloaded",method="-",status="503"} 2"#
        ),
        "refusals count in the request totals the error-ratio alerts read: {metrics}"
    );

    // The body ends (empty: not JSON), the held request is answered, its slot frees.
    drop(body_tx);
    let answered = holding.await.unwrap().unwrap();
    assert!(answered.status().is_client_error(), "{}", answered.status());
    let models = call(
        &app,
        Method::GET,
        "/v1/models",
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.body);
}

/// GET `path`: status and body as text.
async fn text(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `head` (request line and headers, then `body`) over a new connection and returns the
/// connection, for a request whose body is still to come.
fn send(addr: std::net::SocketAddr, head: &str, body: &str) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.write_all(format!("{head}\r\nhost: test\r\n\r\n{body}").as_bytes())
        .unwrap();
    tcp
}

/// The status code of the response on `tcp`.
fn status_of(mut tcp: std::net::TcpStream) -> u16 {
    use std::io::Read as _;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// With `--http-front-thread` the connections live on a thread of their own: a request past
/// the cap is refused while the worker runtime is blocked, and admitted requests are served
/// by the workers.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_front_thread_refuses_while_the_workers_are_busy(admin: PgPool) {
    use agentry_runtime::http::front;

    let mut h = Harness::new(admin).await;
    let db = h.shared_db().await;
    let (_, state) = h.app(db, &["acme"], true);
    let config = HttpConfig {
        max_in_flight: 1,
        ..HttpConfig::default()
    };
    // The workers are this test's own (single-threaded) runtime.
    let app = front::app(&state, config, tokio::runtime::Handle::current());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stopped = front::spawn(listener, app, shutdown.clone()).unwrap();
    let (_, key) = h.insert_key("acme", &["chat"]).await;
    let models = format!("GET /v1/models HTTP/1.1\r\nauthorization: Bearer {key}");

    // An admitted request, answered by the workers.
    let tcp = send(addr, &models, "");
    let status = tokio::task::spawn_blocking(move || status_of(tcp))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // A request whose body never ends holds the only slot.
    let held = send(
        addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: 100"
        ),
        "{",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The workers are blocked (this thread sleeps instead of running them) while another
    // thread asks: the front thread refuses at once.
    let asking = std::thread::spawn(move || {
        let started = Instant::now();
        let status = status_of(send(addr, &models, ""));
        (status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (status, took) = asking.join().unwrap();
    assert_eq!(status, 503);
    assert!(
        took < Duration::from_millis(1000),
        "refused while the workers were blocked, in {took:?}"
    );

    // The held request ends; its slot frees.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tcp = send(
        addr,
        &format!("GET /v1/models HTTP/1.1\r\nauthorization: Bearer {key}"),
        "",
    );
    let status = tokio::task::spawn_blocking(move || status_of(tcp))
        .await
        .unwrap();
    assert_eq!(status, 200);
    shutdown.cancel();
    stopped.await.unwrap().unwrap();
}

/// The nice value of the calling thread (field 19 of `/proc/thread-self/stat`).
#[cfg(target_os = "linux")]
fn nice_of_this_thread() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// The nice values of a worker thread and of the thread that built the runtime (which serves,
/// and so spawns the front thread).
#[cfg(target_os = "linux")]
fn worker_and_main_nice(args: &[&str]) -> (i64, i64) {
    use clap::Parser as _;
    let cli = agentry_runtime::cli::Cli::parse_from(args);
    let runtime = agentry_runtime::tokio_runtime(&cli).unwrap();
    let on_worker = runtime.block_on(async { tokio::spawn(async { nice_of_this_thread() }).await });
    (on_worker.unwrap(), nice_of_this_thread())
}

/// With the front thread, the worker threads run `--worker-nice` levels below the thread that
/// spawns the front thread, so the kernel runs the front thread first; without it they are
/// left alone.
#[cfg(target_os = "linux")]
#[test]
fn with_the_front_thread_the_workers_run_at_a_lower_priority() {
    let (worker, main) = worker_and_main_nice(&["agentry-runtime", "dev", "--http-front-thread"]);
    assert_eq!(worker, (main + 5).min(19), "default --worker-nice is 5");
    let (worker, main) = worker_and_main_nice(&[
        "agentry-runtime",
        "dev",
        "--http-front-thread",
        "--worker-nice",
        "2",
    ]);
    assert_eq!(worker, (main + 2).min(19));
    let (worker, main) = worker_and_main_nice(&["agentry-runtime", "dev"]);
    assert_eq!(worker, main, "no front thread: workers at the same level");
}

/// The background thread runs its tasks `nice` levels below the thread that starts it, and
/// ends when dropped.
#[cfg(target_os = "linux")]
#[test]
fn the_background_thread_runs_below_the_request_path() {
    use agentry_runtime::priority::BackgroundThread;
    let background = BackgroundThread::spawn(4).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    background.handle().spawn(async move {
        let name = std::thread::current().name().map(str::to_owned);
        tx.send((nice_of_this_thread(), name)).unwrap();
    });
    let (nice, name) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(nice, (nice_of_this_thread() + 4).min(19));
    assert_eq!(name.as_deref(), Some("agentry-background"));
    let handle = background.handle().clone();
    drop(background);
    let deadline = Instant::now() + Duration::from_secs(5);
    // A task spawned on a runtime that has shut down is cancelled at once.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    while waiter.block_on(handle.spawn(async {})).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the background thread did not stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// NATS is connected from the runtime it is given, and the client's connection task (which
/// writes every publish to the socket and hands out every acknowledgement) stays there: with
/// the background thread it runs beside the relay, not among the request path's workers.
#[test]
fn nats_connects_on_the_runtime_it_is_given() {
    use agentry_runtime::priority::BackgroundThread;
    use agentry_runtime::serve::connect_nats;
    let url =
        std::env::var("AGENTRY_TEST_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    let background = BackgroundThread::spawn(0).unwrap();
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let on_workers = workers.metrics().num_alive_tasks();
    let on_background = background.handle().metrics().num_alive_tasks();
    let client = workers
        .block_on(connect_nats(&url, background.handle()))
        .unwrap();
    assert_eq!(
        workers.metrics().num_alive_tasks(),
        on_workers,
        "the client left a task on the workers' runtime"
    );
    assert!(
        background.handle().metrics().num_alive_tasks() > on_background,
        "the client's connection task is not on the background runtime"
    );
    drop(client);
}
