//! `POST/GET/DELETE /api/v1/keys`: a tenant's administrators manage its API keys.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Routes of the keys API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
