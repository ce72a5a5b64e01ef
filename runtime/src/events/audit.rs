//! `GET /api/v1/audit`: the tenant's events.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Routes of the audit API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
