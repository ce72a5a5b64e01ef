//! `/healthz`, `/readyz` and `/metrics` of the operator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the operator is started (clients built, settings valid).
    pub started: AtomicBool,
    /// Set while this process runs the controllers.
    pub leader: AtomicBool,
}

/// State of the router.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Health flags.
    pub health: Arc<Health>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The router.
pub fn app(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready once started, leader or standby: a standby is healthy and takes over on its own.
async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    let started = state.health.started.load(Ordering::Relaxed);
    let leader = state.health.leader.load(Ordering::Relaxed);
    let code = if started {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if started { "ready" } else { "starting" },
        "leader": leader,
    });
    (code, Json(body))
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Serves on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(state: ServerState, path: &str) -> (StatusCode, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, token.clone()));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        token.cancel();
        server.await.unwrap().unwrap();
        let code: u16 = response[9..12].parse().unwrap();
        (StatusCode::from_u16(code).unwrap(), response)
    }

    #[tokio::test]
    async fn readiness_follows_startup_and_metrics_are_served() {
        let state = ServerState {
            health: Arc::new(Health::default()),
            metrics: Arc::new(Metrics::new()),
        };
        assert_eq!(get(state.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(state.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.health.started.store(true, Ordering::Relaxed);
        let (code, body) = get(state.clone(), "/readyz").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains(r#""leader":false"#), "{body}");
        state.metrics.leader.set(1);
        let (code, body) = get(state, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("agentry_operator_leader 1"), "{body}");
    }
}
