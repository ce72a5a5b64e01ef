//! The HTTP application: per-area routers merged into one, with request ids, metrics, JSON
//! errors, body limits and timeouts.

mod admin;
mod docs;
pub mod front;
mod health;
pub mod json;
mod observe;
pub mod shed;

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use docs::BearerAuth;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

pub use json::ApiJson;

/// Header carrying the request id (set when the client sent none, echoed in the response).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits of the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// Timeout of one non-streaming request.
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// WebSocket limits (`/ws/chat`).
    pub realtime: crate::realtime::RealtimeConfig,
    /// Most API requests in progress at once; past it requests are shed with 503 (0: no cap).
    pub max_in_flight: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            realtime: crate::realtime::RealtimeConfig::default(),
            max_in_flight: 0,
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Agentry runtime API", description = "The tenant-facing API of an Agentry runtime. Authenticate with an API key (`Authorization: Bearer agk_...`) or an end-user JWT from the tenant's identity provider."),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The authenticated API (`/api/v1/...` and the OpenAI-compatible `/v1/...`), with its
/// OpenAPI description.
pub fn api_router(state: &AppState, config: HttpConfig) -> OpenApiRouter<AppState> {
    let timeout = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request took too long",
            )
        }))
        .timeout(config.request_timeout);
    let authenticate =
        axum::middleware::from_fn_with_state(state.clone(), crate::gateway::authenticate);
    // The OpenAI-compatible routes answer errors (authentication and limits included) in
    // OpenAI's shape.
    let openai = crate::chat::openai::router()
        .layer(authenticate.clone())
        .layer(timeout.clone())
        .layer(axum::middleware::map_response(
            crate::chat::openai::errors::rewrite,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::gateway::keys_api::router())
        .merge(crate::events::audit::router())
        .merge(admin::router())
        .merge(crate::chat::router())
        .merge(crate::orchestrator::api::router())
        .layer(authenticate)
        .layer(timeout)
        .merge(openai)
}

/// Sets `TCP_NODELAY` on an accepted connection: without it a small write (an SSE chunk after
/// the headers) waits for the peer's delayed ACK, about 40 ms on Linux.
pub fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// No route matched: 404, in OpenAI's shape under `/v1/`.
async fn no_route(uri: axum::http::Uri) -> axum::response::Response {
    let error = ApiError::not_found("no such route");
    if uri.path().starts_with("/v1/") {
        crate::chat::openai::errors::response(&error)
    } else {
        error.into_response()
    }
}

/// The whole application.
pub fn app(state: AppState, config: HttpConfig) -> Router {
    admitted(handlers(state.clone(), config), &state, config)
}

/// The application without admission (see [`admitted`]).
pub(crate) fn handlers(state: AppState, config: HttpConfig) -> Router {
    let (api, openapi) = api_router(&state, config).split_for_parts();
    let openapi = std::sync::Arc::new(openapi);
    Router::new()
        .merge(health::router())
        .merge(docs::router(openapi))
        .merge(api)
        // Outside the request timeout (a socket lives for hours); it authenticates itself.
        .merge(crate::realtime::router(config.realtime))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::record,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// `app` behind the cap on requests in progress, when `config.max_in_flight` sets one. It goes
/// outermost: a shed request costs no request id, span, metric lookup, route match,
/// authentication or timer (see `shed`).
pub(crate) fn admitted(app: Router, state: &AppState, config: HttpConfig) -> Router {
    if config.max_in_flight == 0 {
        return app;
    }
    let admission = shed::Admission::new(config.max_in_flight, state);
    app.layer(axum::middleware::from_fn_with_state(admission, shed::admit))
}
