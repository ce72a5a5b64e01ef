//! `GET /api/v1/admin/bundle`: the bundle in force, its diagnostics and the last rejected
//! change.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiResult;
use crate::gateway::{Caller, Scope};
use crate::state::AppState;

/// The bundle in force for the caller's tenant.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleInfo {
    /// Tenant name.
    tenant: String,
    /// Content hash of the bundle in force.
    hash: String,
    /// Bundle document version.
    schema_version: u32,
    /// Where bundles come from.
    source: String,
    /// When the bundle in force was loaded (RFC 3339).
    loaded_at: Option<String>,
    /// Objects in the bundle.
    agents: Vec<String>,
    /// Tools in the bundle.
    tools: Vec<String>,
    /// Workflows in the bundle.
    workflows: Vec<String>,
    /// Flag keys in the bundle.
    flags: Vec<String>,
    /// Compiler diagnostics: objects left out of the bundle and why.
    #[schema(value_type = Vec<Object>)]
    diagnostics: Vec<agentry_crds::Diagnostic>,
    /// The last change that was rejected (the bundle in force kept serving).
    last_error: Option<String>,
    /// When that change was rejected.
    rejected_at: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(bundle))
}

/// The bundle in force and its diagnostics.
#[utoipa::path(
    get,
    path = "/api/v1/admin/bundle",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The bundle in force", body = BundleInfo),
        (status = 401, description = "No valid credentials", body = crate::error::ErrorBody),
        (status = 403, description = "Missing the admin scope", body = crate::error::ErrorBody),
    )
)]
async fn bundle(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<BundleInfo>> {
    caller.require(Scope::Admin)?;
    let bundle = caller.tenant.bundle();
    let report = state.tenants.report();
    Ok(Json(BundleInfo {
        tenant: bundle.tenant.name.clone(),
        hash: bundle.hash.clone(),
        schema_version: bundle.schema_version,
        source: report.source,
        loaded_at: report.loaded_at.map(|t| t.to_rfc3339()),
        agents: bundle.agents.keys().cloned().collect(),
        tools: bundle.tools.keys().cloned().collect(),
        workflows: bundle.workflows.keys().cloned().collect(),
        flags: bundle.flags.keys().cloned().collect(),
        diagnostics: report
            .diagnostics
            .get(&bundle.tenant.name)
            .cloned()
            .unwrap_or_default(),
        last_error: report.last_error,
        rejected_at: report.rejected_at.map(|t| t.to_rfc3339()),
    }))
}
