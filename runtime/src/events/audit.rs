//! `GET /api/v1/audit`: the tenant's events, newest first, with filters and cursor pagination.
//! The query runs in a transaction scoped to the caller's tenant, so row-level security keeps
//! every other tenant's events out whatever the filters say.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Envelope;
use crate::error::{ApiError, ApiResult};
use crate::gateway::{Caller, Scope};
use crate::state::AppState;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page.
pub const MAX_LIMIT: u32 = 500;
/// Longest accepted `type`, `subject` or `actor` filter.
const MAX_FILTER_LEN: usize = 200;

/// Routes of the audit API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Query parameters of `GET /api/v1/audit`. Values are parsed by hand so that an invalid one
/// is answered with a 422 naming it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events of this type, such as `apikey.created`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    type_: Option<String>,
    /// Only events about this subject (an id).
    subject: Option<String>,
    /// Only events caused by this actor (`key:<id>`, `user:<sub>`, `system`).
    actor: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One page of events.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// Events, newest first.
    pub items: Vec<Envelope>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Validated filters.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditFilter {
    /// Event type.
    pub type_: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Actor.
    pub actor: Option<String>,
    /// Inclusive lower bound of the event time.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound of the event time.
    pub until: Option<DateTime<Utc>>,
    /// Page size.
    pub limit: u32,
    /// Only events older than this one (ids are UUIDv7, ordered by time).
    pub before: Option<Uuid>,
}

impl AuditFilter {
    /// Validates the query; the error names the offending parameter.
    pub fn parse(query: AuditQuery) -> Result<Self, ApiError> {
        let since = time_param("since", query.since)?;
        let until = time_param("until", query.until)?;
        if let (Some(since), Some(until)) = (since, until)
            && until <= since
        {
            return Err(ApiError::invalid("until: must be later than since"));
        }
        let limit = match present(query.limit) {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "limit: must be an integer from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        Ok(Self {
            type_: text_param("type", query.type_)?,
            subject: text_param("subject", query.subject)?,
            actor: text_param("actor", query.actor)?,
            since,
            until,
            limit,
            before: present(query.cursor)
                .map(|c| decode_cursor(&c))
                .transpose()?,
        })
    }
}

/// The cursor that continues after event `id`.
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The event id inside a cursor.
pub fn decode_cursor(cursor: &str) -> Result<Uuid, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::invalid("cursor: not a cursor returned by this API"))
}

/// An empty value counts as absent (`?type=` from a form).
fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn text_param(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match present(value) {
        Some(v) if v.chars().count() > MAX_FILTER_LEN => Err(ApiError::invalid(format!(
            "{name}: longer than {MAX_FILTER_LEN} characters"
        ))),
        v => Ok(v),
    }
}

fn time_param(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    present(value)
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(format!(
                        "{name}: not an RFC 3339 time such as 2026-01-31T12:00:00Z"
                    ))
                })
        })
        .transpose()
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    #[sqlx(rename = "type")]
    type_: String,
    version: i32,
    subject: Option<String>,
    actor: Option<String>,
    data: Value,
    created_at: DateTime<Utc>,
}

/// The tenant's audit log: every recorded event, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events, newest first", body = AuditPage),
        (status = 401, description = "No valid credentials", body = crate::error::ErrorBody),
        (status = 403, description = "Missing the admin scope", body = crate::error::ErrorBody),
        (status = 422, description = "An invalid parameter, named in the message", body = crate::error::ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(Scope::Admin)?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let filter = AuditFilter::parse(query)?;
    let mut tx = state.db.begin(caller.tenant.id).await?;
    // Only the predicates in use, so that each filter combination gets a plan that uses its
    // index. Values are always bound, never spliced.
    let mut sql = QueryBuilder::<Postgres>::new(
        "select id, type, version, subject, actor, data, created_at from agentry.events where true",
    );
    if let Some(type_) = &filter.type_ {
        sql.push(" and type = ").push_bind(type_);
    }
    if let Some(subject) = &filter.subject {
        sql.push(" and subject = ").push_bind(subject);
    }
    if let Some(actor) = &filter.actor {
        sql.push(" and actor = ").push_bind(actor);
    }
    if let Some(since) = filter.since {
        sql.push(" and created_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        sql.push(" and created_at < ").push_bind(until);
    }
    if let Some(before) = filter.before {
        sql.push(" and id < ").push_bind(before);
    }
    // One more row than asked tells whether another page exists.
    sql.push(" order by id desc limit ")
        .push_bind(i64::from(filter.limit) + 1);
    let mut rows: Vec<Row> = sql.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let more = rows.len() > filter.limit as usize;
    rows.truncate(filter.limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.id)))
        .flatten();
    let tenant = caller.tenant.name.clone();
    let items = rows
        .into_iter()
        .map(|r| Envelope {
            id: r.id,
            type_: r.type_,
            version: r.version,
            tenant: tenant.clone(),
            subject: r.subject,
            actor: r.actor,
            time: r.created_at,
            data: r.data,
        })
        .collect();
    Ok(Json(AuditPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> AuditQuery {
        let mut q = AuditQuery::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "type" => q.type_ = v,
                "subject" => q.subject = v,
                "actor" => q.actor = v,
                "since" => q.since = v,
                "until" => q.until = v,
                "limit" => q.limit = v,
                "cursor" => q.cursor = v,
                other => panic!("unknown {other}"),
            }
        }
        q
    }

    fn message(pairs: &[(&str, &str)]) -> String {
        AuditFilter::parse(query(pairs))
            .expect_err("should be rejected")
            .message
    }

    #[test]
    fn cursor_round_trips() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)).ok(), Some(id));
    }

    #[test]
    fn defaults_and_empty_values() {
        let f = AuditFilter::parse(query(&[("type", ""), ("limit", "")])).unwrap();
        assert_eq!(f.limit, DEFAULT_LIMIT);
        assert_eq!(f.type_, None);
        assert_eq!(f.before, None);
    }

    #[test]
    fn invalid_parameters_are_named() {
        assert!(message(&[("limit", "0")]).starts_with("limit:"));
        assert!(message(&[("limit", "501")]).starts_with("limit:"));
        assert!(message(&[("limit", "ten")]).starts_with("limit:"));
        assert!(message(&[("since", "yesterday")]).starts_with("since:"));
        assert!(message(&[("until", "2026-13-01T00:00:00Z")]).starts_with("until:"));
        assert!(message(&[("cursor", "!!")]).starts_with("cursor:"));
        assert!(message(&[("cursor", &URL_SAFE_NO_PAD.encode([1_u8; 15]))]).starts_with("cursor:"));
        assert!(message(&[("type", &"x".repeat(201))]).starts_with("type:"));
        assert!(
            message(&[
                ("since", "2026-01-02T00:00:00Z"),
                ("until", "2026-01-01T00:00:00+00:00")
            ])
            .starts_with("until:")
        );
    }

    #[test]
    fn times_are_normalised_to_utc() {
        let f = AuditFilter::parse(query(&[("since", "2026-01-01T02:00:00+02:00")])).unwrap();
        assert_eq!(
            f.since.map(|t| t.to_rfc3339()),
            Some("2026-01-01T00:00:00+00:00".to_owned())
        );
    }
}
