//! `POST/GET/DELETE /api/v1/keys`: a tenant's administrators manage its API keys.
//!
//! Every call needs the `admin` scope. A new key's plaintext is answered once and never
//! stored; listings show the key id only. Creation and revocation each write an audit event
//! (`apikey.created`, `apikey.revoked`) in the same transaction. See docs/auth.md.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{Caller, Principal, Scope, apikeys};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, NewEvent};
use crate::http::ApiJson;
use crate::state::AppState;

/// Longest key name, in characters.
const MAX_NAME_CHARS: usize = 100;

/// Routes of the keys API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

/// A key to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for, shown in listings (1 to 100 characters).
    name: String,
    /// Scopes the key carries (at least one).
    #[schema(value_type = Vec<Scope>)]
    scopes: Vec<String>,
}

/// A newly created key, with its plaintext: shown once, never again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// Row id; `DELETE /api/v1/keys/{id}` revokes the key.
    id: Uuid,
    /// The key to hand to the client (`agk_<keyId>_<secret>`).
    key: String,
    /// The public lookup part of the key.
    key_id: String,
    /// Name.
    name: String,
    /// Scopes.
    scopes: Vec<Scope>,
    /// Creation time.
    created_at: DateTime<Utc>,
}

/// A key as listed: no secret, no hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Row id.
    id: Uuid,
    /// The public lookup part of the key.
    key_id: String,
    /// How the key starts, to recognise it (`agk_<keyId>_…`).
    prefix: String,
    /// Name.
    name: String,
    /// Scopes.
    scopes: Vec<Scope>,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// When the key was revoked, if it was.
    revoked_at: Option<DateTime<Utc>>,
    /// Last successful use, to within a minute.
    last_used_at: Option<DateTime<Utc>>,
}

/// The tenant's keys, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// Keys, revoked ones included.
    keys: Vec<KeyInfo>,
}

#[derive(sqlx::FromRow)]
struct KeyRecord {
    id: Uuid,
    key_id: String,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

/// Creates an API key.
#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = "keys",
    security(("bearer" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key; its plaintext is shown only in this answer", body = CreatedKey),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Body is not JSON", body = crate::error::ErrorBody),
        (status = 401, description = "No valid credentials", body = crate::error::ErrorBody),
        (status = 403, description = "Missing the admin scope", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid name or scope", body = crate::error::ErrorBody),
    )
)]
async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    caller.require(Scope::Admin)?;
    let name = valid_name(&body.name)?;
    let scopes = valid_scopes(&body.scopes)?;
    let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let key = apikeys::generate();
    let id = Uuid::now_v7();
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "insert into agentry.api_keys (tenant_id, id, key_id, secret_hash, name, scopes)
         values ($1, $2, $3, $4, $5, $6) returning created_at",
    )
    .bind(tenant.0)
    .bind(id)
    .bind(&key.key_id)
    .bind(&key.secret_hash)
    .bind(&name)
    .bind(&scope_names)
    .fetch_one(&mut *tx)
    .await?;
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(
            "apikey.created",
            json!({"id": id, "keyId": key.key_id, "name": name, "scopes": scope_names}),
        )
        .subject(id.to_string())
        .actor(caller.actor()),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id,
            key: key.plaintext,
            key_id: key.key_id,
            name,
            scopes,
            created_at,
        }),
    ))
}

/// Lists the tenant's API keys, newest first, without secrets.
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "keys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The keys, revoked ones included", body = KeyList),
        (status = 401, description = "No valid credentials", body = crate::error::ErrorBody),
        (status = 403, description = "Missing the admin scope", body = crate::error::ErrorBody),
    )
)]
async fn list_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<KeyList>> {
    caller.require(Scope::Admin)?;
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    let rows: Vec<KeyRecord> = sqlx::query_as(
        "select id, key_id, name, scopes, created_at, revoked_at, last_used_at
         from agentry.api_keys where tenant_id = $1
         order by created_at desc, id desc",
    )
    .bind(tenant.0)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let keys = rows
        .into_iter()
        .map(|r| KeyInfo {
            prefix: format!("{}{}_…", apikeys::PREFIX, r.key_id),
            scopes: r.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            id: r.id,
            key_id: r.key_id,
            name: r.name,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        })
        .collect();
    Ok(Json(KeyList { keys }))
}

/// Revokes an API key. Idempotent: revoking a revoked key answers 204 again. A key cannot
/// revoke itself (409), so that an administrator cannot lock the tenant out by accident.
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    tag = "keys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Row id of the key")),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 400, description = "The id is not a UUID", body = crate::error::ErrorBody),
        (status = 401, description = "No valid credentials", body = crate::error::ErrorBody),
        (status = 403, description = "Missing the admin scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such key in this tenant", body = crate::error::ErrorBody),
        (status = 409, description = "The key tried to revoke itself", body = crate::error::ErrorBody),
    )
)]
async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<Uuid>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Admin)?;
    let Path(id) = id.map_err(|_| ApiError::bad_request("the key id must be a UUID"))?;
    if caller.principal == (Principal::ApiKey { id }) {
        return Err(ApiError::conflict(
            "a key cannot revoke itself; revoke it with another admin key",
        ));
    }
    let tenant = caller.tenant.id;
    let mut tx = state.db.begin(tenant).await?;
    let found: Option<(String, String, bool)> = sqlx::query_as(
        "select key_id, name, revoked_at is not null from agentry.api_keys
         where tenant_id = $1 and id = $2 for update",
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((key_id, name, already)) = found else {
        return Err(ApiError::not_found("no such API key"));
    };
    if already {
        tx.commit().await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    sqlx::query("update agentry.api_keys set revoked_at = now() where tenant_id = $1 and id = $2")
        .bind(tenant.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    events::emit(
        &mut tx,
        tenant,
        NewEvent::new(
            "apikey.revoked",
            json!({"id": id, "keyId": key_id, "name": name}),
        )
        .subject(id.to_string())
        .actor(caller.actor()),
    )
    .await?;
    tx.commit().await?;
    // This replica stops accepting the key at once; the others within the cache TTL.
    state.auth.forget_key(&key_id);
    Ok(StatusCode::NO_CONTENT)
}

fn valid_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "name: must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name: must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

fn valid_scopes(names: &[String]) -> ApiResult<Vec<Scope>> {
    if names.is_empty() {
        return Err(ApiError::invalid("scopes: at least one scope is required"));
    }
    let mut scopes = names
        .iter()
        .map(|name| {
            Scope::parse(name).ok_or_else(|| {
                ApiError::invalid(format!(
                    "scopes: unknown scope {name:?}; valid scopes are {}",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ))
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_validated_by_name() {
        let err = valid_scopes(&["chat".into(), "root".into()]).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("\"root\""), "{}", err.message);
        assert!(valid_scopes(&[]).is_err());
        assert_eq!(
            valid_scopes(&["ingest".into(), "chat".into(), "chat".into()]).unwrap(),
            vec![Scope::Chat, Scope::Ingest]
        );
    }

    #[test]
    fn names_are_bounded() {
        assert!(valid_name("  ").is_err());
        assert!(valid_name(&"x".repeat(101)).is_err());
        assert!(valid_name("ci\u{7}bot").is_err());
        assert_eq!(valid_name(" ci bot ").unwrap(), "ci bot");
    }
}
