//! The gateway: who is calling (API keys, JWTs), what they may do (scopes), and how much
//! (rate limits, stream caps). Runs as one layer in front of every `/api/v1` route.

pub mod apikeys;
pub mod auth;
pub mod caller;
pub mod jwt;
pub mod keys_api;
pub mod limits;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

pub use caller::{Caller, Principal, Scope};

use crate::error::ApiError;
use crate::state::AppState;

/// Tenant name attached to a response, for metrics recorded outside the auth layer.
#[derive(Clone, Debug)]
pub struct ServedTenant(pub String);

/// Authenticates the request, applies the request-rate limits, and hands the [`Caller`] to
/// the handler through the request's extensions.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(&state, request.headers()).await?;
    let tenant_name = caller.tenant.name.clone();
    if caller.tenant.bundle().tenant.suspended {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "tenant_suspended",
            "this tenant is suspended",
        ));
    }
    if let Err(e) = state.limiter.check_request(&caller) {
        state.metrics.rejected(&tenant_name, e.limit);
        return Err(e.into());
    }
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(ServedTenant(tenant_name));
    Ok(response)
}
