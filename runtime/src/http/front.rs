//! The front thread (`--http-front-thread`): connections on a thread of their own, so that a
//! saturated runtime still refuses fast (docs/limits.md, "Overload: shedding").
//!
//! By default every connection is a task of the one work runtime. Past capacity, a new
//! request then waits in that runtime's run queue, behind the CPU work of the requests in
//! progress, before the in-flight check even sees it: about cap × CPU per request. With the
//! front thread, a current-thread runtime on its own OS thread owns the connections: it
//! parses requests, applies the in-flight cap, writes responses, and hands each admitted
//! request to the work runtime. That thread uses little CPU, so the kernel runs it soon after
//! a request arrives, however busy the work runtime is. The price is a hand-off between two
//! threads for every admitted request.

use std::convert::Infallible;
use std::net::TcpListener;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::HttpConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// Aborts a request's task when the connection waiting for it goes away, as dropping the
/// handler's future does without the front thread (a finished task ignores it).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The application for the front thread: admission there, everything else on the `work`
/// runtime.
pub fn app(state: &AppState, config: HttpConfig, work: Handle) -> Router {
    super::admitted(
        forward(super::handlers(state.clone(), config), work),
        state,
        config,
    )
}

/// A router for the front thread that runs every request through `app` on the `work`
/// runtime (the response's body is polled where the connection lives).
fn forward(app: Router, work: Handle) -> Router {
    let service = tower::service_fn(move |request: Request| {
        let task = work.spawn(app.clone().oneshot(request));
        let abort = AbortOnDrop(task.abort_handle());
        async move {
            let _abort = abort;
            let response = match task.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                // Cancelled at shutdown, or a panic past `CatchPanicLayer`.
                Err(e) => {
                    tracing::error!(error = %e, "a request's task ended without an answer");
                    ApiError::internal("the request's task ended without an answer").into_response()
                }
            };
            Ok::<Response, Infallible>(response)
        }
    });
    Router::new().fallback_service(service)
}

/// Serves `app` on `listener` from a new thread `agentry-http-front` until `shutdown`, then
/// waits for open connections to finish (as `axum::serve` does). The receiver gets the
/// server's outcome.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<oneshot::Receiver<std::io::Result<()>>> {
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("agentry-http-front".to_owned())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener =
                            tokio::net::TcpListener::from_std(listener)?.tap_io(super::set_nodelay);
                        axum::serve(listener, app)
                            .with_graceful_shutdown(shutdown.cancelled_owned())
                            .await
                    })
                });
            let _ = done_tx.send(served);
        })?;
    Ok(done)
}
