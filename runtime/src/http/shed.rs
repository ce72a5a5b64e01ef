//! Load shedding: a cap on requests in progress across the whole API. A request over the cap
//! is answered at once with 503 `overloaded` and `Retry-After`, instead of queueing behind the
//! others: past capacity a queue only adds latency to every request, admitted ones included.
//!
//! The check is the outermost layer of the application, before request ids, spans, metrics
//! and routing: over capacity the one core that answers is saturated, and every microsecond a
//! refusal costs is taken from the admitted requests and adds to how long the next refusal
//! waits. So the answer is prepared once (its bodies in both error shapes and its counters)
//! and a shed request costs a path comparison, two counter increments and a few headers.
//! See docs/limits.md.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::metrics::{LimitLabels, RequestLabels};
use crate::state::AppState;

/// Seconds a shed client is asked to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// The shared in-progress cap and the prepared refusal.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    /// The refusal in Agentry's error shape (`/api/...`).
    native: Bytes,
    /// The refusal in OpenAI's error shape (`/v1/...`).
    openai: Bytes,
    /// `agentry_limit_rejections_total{tenant="-",limit="overload"}`.
    rejections: Counter,
    /// `agentry_http_requests_total{tenant="-",route="overloaded",method="-",status="503"}`:
    /// refusals count in the error ratio that the SLO alerts and dashboards read.
    refused_requests: Counter,
}

impl Admission {
    /// At most `limit` API requests in progress at once.
    pub fn new(limit: usize, state: &AppState) -> Self {
        let error = ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("the server is at capacity ({limit} requests in progress); retry shortly"),
            )
        };
        let rejections = state
            .metrics
            .limit_rejections
            .get_or_create(&LimitLabels {
                tenant: "-".to_owned(),
                limit: "overload".to_owned(),
            })
            .clone();
        let refused_requests = state
            .metrics
            .http_requests
            .get_or_create(&RequestLabels {
                tenant: "-".to_owned(),
                route: "overloaded".to_owned(),
                method: "-".to_owned(),
                status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            })
            .clone();
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            native: json_bytes(&error.body()),
            openai: json_bytes(&crate::chat::openai::errors::render(&error).1),
            rejections,
            refused_requests,
        }
    }

    fn refusal(&self, openai: bool) -> Response {
        let body = if openai { &self.openai } else { &self.native };
        let mut response = Response::new(Body::from(body.clone()));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        response
    }
}

fn json_bytes(value: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Runs the request when a slot is free, or answers 503 without waiting. Only the API is
/// counted (`/api/...` and `/v1/...`): health checks, metrics, docs and WebSockets (capped per
/// tenant on their own) pass. The slot is held until the response starts (a stream's body runs
/// outside it, under the stream caps).
pub async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let openai = path.starts_with("/v1/");
    if !openai && !path.starts_with("/api/") {
        return next.run(request).await;
    }
    let Ok(_slot) = admission.permits.try_acquire() else {
        admission.rejections.inc();
        admission.refused_requests.inc();
        return admission.refusal(openai);
    };
    next.run(request).await
}
