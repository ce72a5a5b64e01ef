//! Realtime chat over a WebSocket (`GET /ws/chat`): the chat API's turns and events on one
//! long-lived socket carrying several conversations. See docs/realtime.md.

mod connection;
pub mod protocol;
mod runs;

use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::gateway::{Caller, Scope};
use crate::state::AppState;

pub use connection::CLOSE_TRY_AGAIN_LATER;

/// The subprotocol the server selects.
pub const SUBPROTOCOL: &str = "agentry.v1";
/// Prefix of the subprotocol that carries a bearer token (browsers cannot set headers).
pub const BEARER_PREFIX: &str = "agentry.bearer.";

/// Limits of realtime connections.
#[derive(Debug, Clone, Copy)]
pub struct RealtimeConfig {
    /// Interval of server pings.
    pub heartbeat: Duration,
    /// A connection with no frame from the client (pongs included) for this long is closed.
    pub idle_timeout: Duration,
    /// Server events queued per connection.
    pub queue_capacity: usize,
    /// How long the client may stay behind (queue full) before it is closed with 1013.
    pub slow_consumer_timeout: Duration,
    /// Most token text coalesced per turn while the client is behind.
    pub max_pending_bytes: usize,
    /// Turns running at once on one connection.
    pub max_turns: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            queue_capacity: 64,
            slow_consumer_timeout: Duration::from_secs(10),
            max_pending_bytes: 256 * 1024,
            max_turns: 8,
        }
    }
}

/// The `/ws/chat` route. It authenticates itself (header or subprotocol) and must sit outside
/// the request timeout.
pub fn router(config: RealtimeConfig) -> Router<AppState> {
    Router::new()
        .route("/ws/chat", get(upgrade))
        .layer(axum::Extension(config))
}

async fn upgrade(
    State(state): State<AppState>,
    Extension(config): Extension<RealtimeConfig>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match accept(state, config, &headers, ws).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn accept(
    state: AppState,
    config: RealtimeConfig,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (caller, by_subprotocol) = authenticate(&state, headers).await?;
    caller.require(Scope::Chat)?;
    let permit = match state.limiter.acquire_stream(&caller.tenant) {
        Ok(p) => p,
        Err(e) => {
            state.metrics.rejected(&caller.tenant.name, e.limit);
            return Err(e.into());
        }
    };
    let mut ws = ws
        // Small buffers: an idle socket costs a few KiB.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024);
    let offered = ws
        .requested_protocols()
        .any(|p| p.as_bytes() == SUBPROTOCOL.as_bytes());
    if by_subprotocol || offered {
        ws.set_selected_protocol(HeaderValue::from_static(SUBPROTOCOL));
    }
    Ok(ws
        .on_upgrade(move |socket| connection::serve(socket, state, caller, config, permit))
        .into_response())
}

/// The caller, by `Authorization: Bearer` or else by an `agentry.bearer.<token>` subprotocol;
/// request-rate limits apply as on every API request. Whether the subprotocol was used.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<(Caller, bool), ApiError> {
    let token = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PREFIX).map(str::to_owned));
    let (caller, by_subprotocol) = match (headers.contains_key(header::AUTHORIZATION), token) {
        (false, Some(token)) => {
            let mut synthetic = HeaderMap::new();
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ApiError::unauthorized("malformed bearer subprotocol"))?;
            synthetic.insert(header::AUTHORIZATION, value);
            (state.auth.authenticate(state, &synthetic).await?, true)
        }
        _ => (state.auth.authenticate(state, headers).await?, false),
    };
    if caller.tenant.bundle().tenant.suspended {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_suspended",
            "this tenant is suspended",
        ));
    }
    if let Err(e) = state.limiter.check_request(&caller) {
        state.metrics.rejected(&caller.tenant.name, e.limit);
        return Err(e.into());
    }
    Ok((caller, by_subprotocol))
}
