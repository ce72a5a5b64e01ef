//! Per-request metrics and a tracing span carrying the request id.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::REQUEST_ID;
use crate::gateway::ServedTenant;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;

/// Records count and latency by tenant, route and status, inside a span with the request id.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!("request", %method, %route, request_id = %request_id);
    let response = next.run(request).instrument(span).await;
    let tenant = response
        .extensions()
        .get::<ServedTenant>()
        .map_or_else(|| "-".to_owned(), |t| t.0.clone());
    let status = response.status().as_u16();
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            tenant,
            route: route.clone(),
            method,
            status,
        })
        .inc();
    state
        .metrics
        .http_latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
