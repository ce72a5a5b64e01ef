//! Load shedding: a cap on requests in progress across the whole API. A request over the cap
//! is answered at once with 503 `overloaded` and `Retry-After`, instead of queueing behind the
//! others: past capacity a queue only adds latency to every request, admitted ones included.
//! See docs/limits.md.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;

/// Seconds a shed client is asked to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// The shared in-progress cap.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    /// At most `limit` requests in progress at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

/// Runs the request when a slot is free, or answers 503 without waiting. The slot is held
/// until the response starts (a stream's body runs outside it, under the stream caps).
pub async fn admit(
    State((admission, state)): State<(Admission, AppState)>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_slot) = admission.permits.try_acquire() else {
        state.metrics.rejected("-", "overload");
        return ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "the server is at capacity ({} requests in progress); retry shortly",
                    admission.limit
                ),
            )
        }
        .into_response();
    };
    next.run(request).await
}
