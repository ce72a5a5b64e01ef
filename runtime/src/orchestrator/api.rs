//! `/api/v1/orchestrator/*` (scope `workflows`): start runs, list and read them with their
//! steps, decide approvals and handoffs, cancel, and follow a run's steps over SSE.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::follow::{self, RunUpdate};
use super::model::{Decision, Run, RunStatus, StepRecord, Wait};
use super::store::{self, ChangeError, ListFilter, RunRow, StoredPrincipal};
use crate::error::{ApiError, ApiResult};
use crate::flags::{self, Subject};
use crate::gateway::{Caller, Scope};
use crate::http::ApiJson;
use crate::state::AppState;

/// Longest `waitSeconds` a request may ask for.
const MAX_WAIT_SECONDS: u32 = 60;

/// Routes of the orchestrator API.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_run))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(decide))
        .routes(routes!(cancel))
        .routes(routes!(run_events))
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// Run id.
    pub id: Uuid,
    /// Workflow.
    pub workflow: String,
    /// Revision of the workflow the run started with.
    pub revision: String,
    /// Status.
    pub status: RunStatus,
    /// Input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The `end` node's result.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why it failed, was denied, handed off, cancelled or timed out.
    pub error: Option<String>,
    /// The pause it is in (approval or handoff).
    pub wait: Option<Wait>,
    /// The run state (node outputs).
    #[schema(value_type = Object)]
    pub state: Value,
    /// Steps executed.
    pub step_count: u32,
    /// `key:<id>` or `user:<subject>`.
    pub started_by: String,
    /// Times a replica claimed the run (more than one after a takeover or a resume).
    pub claims: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deadline.
    pub deadline: DateTime<Utc>,
}

impl RunView {
    /// The view of a stored run.
    pub fn from_row(row: &RunRow) -> Self {
        let cursor = &row.cursor.0;
        Self {
            id: row.id,
            workflow: row.workflow.clone(),
            revision: row.revision.clone(),
            status: row.status(),
            input: row.input.clone(),
            result: row.result.clone(),
            error: row.error.clone(),
            wait: cursor.wait.clone(),
            state: Value::Object(cursor.state.clone()),
            step_count: cursor.steps,
            started_by: row.started_by.clone(),
            claims: row.claims,
            created_at: row.created_at,
            updated_at: row.updated_at,
            finished_at: row.finished_at,
            deadline: row.deadline,
        }
    }
}

/// A run with its steps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    run: RunView,
    /// Steps in order.
    steps: Vec<StepRecord>,
}

/// Runs, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    /// Runs.
    runs: Vec<RunView>,
}

/// A run to start.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRun {
    /// The input; must satisfy the workflow's input schema.
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    /// Answer when the run ends or pauses (at most `waitSeconds`) instead of at once.
    #[serde(default)]
    wait: bool,
    /// How long to wait, 1 to 60 seconds (default 30).
    wait_seconds: Option<u32>,
}

/// A decision on a paused run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecideRun {
    /// Approve (continue) or deny.
    approve: bool,
    /// Why.
    comment: Option<String>,
    /// Who decided (a person's name or id); defaults to the caller.
    approver: Option<String>,
    /// Answer when the run ends or pauses again (at most `waitSeconds`).
    #[serde(default)]
    wait: bool,
    /// How long to wait, 1 to 60 seconds (default 30).
    wait_seconds: Option<u32>,
}

/// A cancellation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Why.
    reason: Option<String>,
}

/// Filters of the run list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    /// Only this workflow.
    workflow: Option<String>,
    /// Only this status.
    status: Option<String>,
    /// Runs older than this run id (paging).
    before: Option<Uuid>,
    /// Most runs, 1 to 200 (default 50).
    limit: Option<i64>,
}

fn wait_for(wait: bool, seconds: Option<u32>) -> Result<Option<Duration>, ApiError> {
    match (wait, seconds) {
        (_, Some(s)) if s == 0 || s > MAX_WAIT_SECONDS => Err(ApiError::invalid(format!(
            "waitSeconds must be 1 to {MAX_WAIT_SECONDS}"
        ))),
        (false, Some(_)) => Err(ApiError::invalid("waitSeconds needs wait: true")),
        (false, None) => Ok(None),
        (true, s) => Ok(Some(Duration::from_secs(u64::from(s.unwrap_or(30))))),
    }
}

/// Starts a run of `workflow` for `caller` (used by the API, chat and the `run_workflow` tool).
pub async fn start(
    state: &AppState,
    caller: &Caller,
    workflow: &str,
    input: Value,
    conversation: Option<Uuid>,
) -> Result<RunRow, ApiError> {
    let bundle = caller.tenant.bundle();
    let Some(compiled) = bundle.workflows.get(workflow) else {
        return Err(unknown_workflow(state, caller, workflow));
    };
    validate_input(&compiled.input_schema, &input)?;
    let flags = evaluate_flags(&bundle, caller, workflow);
    let run = Run::new(Uuid::now_v7(), compiled.clone(), input, flags, Utc::now());
    let row = store::create(
        &state.db,
        caller.tenant.id,
        &run,
        &caller.actor(),
        &StoredPrincipal::from(&caller.principal),
        conversation,
    )
    .await?;
    state.runs.wake();
    Ok(row)
}

/// 404 for a workflow that does not exist; 422 with the compiler's diagnostic for one that
/// exists but did not compile (dev mode knows the diagnostics; in a cluster the Workflow's
/// status carries them).
fn unknown_workflow(state: &AppState, caller: &Caller, workflow: &str) -> ApiError {
    let report = state.tenants.report();
    let diagnostics: Vec<String> = report
        .diagnostics
        .get(&caller.tenant.name)
        .into_iter()
        .flatten()
        .filter(|d| d.kind.to_string() == "Workflow" && d.name == workflow)
        .map(|d| match &d.field {
            Some(field) => format!("{field}: {}", d.message),
            None => d.message.clone(),
        })
        .collect();
    if diagnostics.is_empty() {
        ApiError::not_found(format!(
            "no workflow named {workflow:?} (a Workflow that failed compilation is not runnable; its status says why)"
        ))
    } else {
        ApiError::invalid(format!(
            "workflow {workflow:?} is not runnable: it failed compilation: {}",
            diagnostics.join("; ")
        ))
    }
}

fn validate_input(schema: &Value, input: &Value) -> Result<(), ApiError> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| ApiError::invalid(format!("the workflow's input schema is invalid: {e}")))?;
    let problems = crate::schema::problems(&validator, input, |path| {
        format!("input{}", path.replace('/', "."))
    });
    match problems {
        None => Ok(()),
        Some(problems) => Err(ApiError::invalid(problems)),
    }
}

/// Every flag's value for this run (the `flags` of expressions), evaluated once at start so a
/// run sees one consistent set.
fn evaluate_flags(bundle: &agentry_crds::RuntimeBundle, caller: &Caller, workflow: &str) -> Value {
    let ctx = flags::context(bundle, caller, Subject::Workflow(workflow));
    let values = bundle
        .flags
        .iter()
        .filter_map(|(k, f)| flags::eval::evaluate(f, &ctx).map(|(_, v)| (k.clone(), v.clone())))
        .collect();
    Value::Object(values)
}

/// Starts a run (input validated against the workflow's input schema); answers at once, or
/// with `wait: true` when the run ends or pauses.
#[utoipa::path(
    post, path = "/api/v1/orchestrator/workflows/{name}/runs", tag = "orchestrator",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Workflow name")),
    request_body = StartRun,
    responses(
        (status = 201, description = "The run (ended or paused when `wait` was set and it got there in time)", body = RunView),
        (status = 403, description = "Missing the workflows scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such workflow", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid input (the message names the field), or a workflow that failed compilation", body = crate::error::ErrorBody),
    )
)]
async fn start_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<StartRun>,
) -> ApiResult<Response> {
    caller.require(Scope::Workflows)?;
    let wait = wait_for(body.wait, body.wait_seconds)?;
    let input = body.input.unwrap_or_else(|| json!({}));
    let mut row = start(&state, &caller, &name, input, None).await?;
    if let Some(timeout) = wait {
        row = follow::settle(&state, caller.tenant.id, row.id, timeout).await?;
    }
    let location = format!("/api/v1/orchestrator/runs/{}", row.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(RunView::from_row(&row)),
    )
        .into_response())
}

/// The tenant's runs, newest first.
#[utoipa::path(
    get, path = "/api/v1/orchestrator/runs", tag = "orchestrator", security(("bearer" = [])),
    params(RunQuery),
    responses(
        (status = 200, description = "Runs", body = RunList),
        (status = 422, description = "Invalid filter", body = crate::error::ErrorBody),
    )
)]
async fn list_runs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<RunList>> {
    caller.require(Scope::Workflows)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            RunStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status: {s:?} is not one of {}",
                    RunStatus::ALL.map(RunStatus::as_str).join(", ")
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 200"));
    }
    let filter = ListFilter {
        workflow: q.workflow,
        status,
        // An end user sees only the runs they started.
        started_by: caller.user_id().map(|_| caller.actor()),
        before: q.before,
        limit,
    };
    let rows = store::list(&state.db, caller.tenant.id, &filter).await?;
    Ok(Json(RunList {
        runs: rows.iter().map(RunView::from_row).collect(),
    }))
}

pub(crate) async fn visible_run(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<RunRow, ApiError> {
    store::get(&state.db, caller.tenant.id, id)
        .await?
        .filter(|row| caller.user_id().is_none() || row.started_by == caller.actor())
        .ok_or_else(|| ApiError::not_found("no such run"))
}

/// A run with its steps.
#[utoipa::path(
    get, path = "/api/v1/orchestrator/runs/{id}", tag = "orchestrator", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run and its steps", body = RunDetail),
        (status = 404, description = "No such run for this caller", body = crate::error::ErrorBody),
    )
)]
async fn get_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<RunDetail>> {
    caller.require(Scope::Workflows)?;
    let row = visible_run(&state, &caller, id).await?;
    let steps = store::steps(&state.db, caller.tenant.id, id, 0).await?;
    Ok(Json(RunDetail {
        run: RunView::from_row(&row),
        steps,
    }))
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::NotFound => ApiError::not_found("no such run"),
        ChangeError::Conflict(message) => ApiError::conflict(message),
        ChangeError::Api(e) => e,
    }
}

/// Approves or denies a run paused at an approval (or resumes or ends one paused by a
/// handoff); the run continues on a replica right away.
#[utoipa::path(
    post, path = "/api/v1/orchestrator/runs/{id}/approvals", tag = "orchestrator",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    request_body = DecideRun,
    responses(
        (status = 200, description = "The run after the decision", body = RunView),
        (status = 404, description = "No such run for this caller", body = crate::error::ErrorBody),
        (status = 409, description = "The run waits for no decision", body = crate::error::ErrorBody),
    )
)]
async fn decide(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<DecideRun>,
) -> ApiResult<Json<RunView>> {
    caller.require(Scope::Workflows)?;
    let wait = wait_for(body.wait, body.wait_seconds)?;
    visible_run(&state, &caller, id).await?;
    let approver = match body.approver {
        Some(a) if a.trim().is_empty() || a.len() > 200 => {
            return Err(ApiError::invalid("approver must be 1 to 200 characters"));
        }
        Some(a) => format!("{a} (via {})", caller.actor()),
        None => caller.actor(),
    };
    let decision = Decision {
        approve: body.approve,
        comment: body.comment,
        approver,
        decided_at: Utc::now(),
    };
    let mut row = store::decide(&state.db, caller.tenant.id, id, decision)
        .await
        .map_err(change_error)?;
    state.runs.wake();
    state.runs.changed(id);
    if let Some(timeout) = wait {
        // The decided run is `pending` until a worker takes it, so it is not mistaken for the
        // pause it just left: settling waits for its next pause or its end.
        row = follow::settle(&state, caller.tenant.id, id, timeout).await?;
    }
    Ok(Json(RunView::from_row(&row)))
}

/// Cancels a run that has not ended.
#[utoipa::path(
    post, path = "/api/v1/orchestrator/runs/{id}/cancel", tag = "orchestrator",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    request_body = CancelRun,
    responses(
        (status = 200, description = "The cancelled run", body = RunView),
        (status = 404, description = "No such run for this caller", body = crate::error::ErrorBody),
        (status = 409, description = "The run already ended", body = crate::error::ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RunView>> {
    caller.require(Scope::Workflows)?;
    // The body is optional: an empty one cancels without a reason.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<CancelRun>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .reason
    };
    visible_run(&state, &caller, id).await?;
    let row = store::cancel(
        &state.db,
        caller.tenant.id,
        id,
        &caller.actor(),
        reason.as_deref(),
    )
    .await
    .map_err(change_error)?;
    state.runs.changed(id);
    Ok(Json(RunView::from_row(&row)))
}

/// The run's steps and status changes as server-sent events: `step` (a step record, its `seq`
/// as the event id), `status` (the run), and the stream ends after the run ends. Reconnect
/// with `Last-Event-ID` to continue after the last step seen.
#[utoipa::path(
    get, path = "/api/v1/orchestrator/runs/{id}/events", tag = "orchestrator",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "An SSE stream of `step` and `status` events", content_type = "text/event-stream"),
        (status = 404, description = "No such run for this caller", body = crate::error::ErrorBody),
    )
)]
async fn run_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Scope::Workflows)?;
    visible_run(&state, &caller, id).await?;
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(0, |seq| seq + 1);
    let stream = follow::follow(state, caller.tenant.id, id, from).map(|update| {
        let event = match update {
            Ok(RunUpdate::Step(step)) => Event::default()
                .event("step")
                .id(step.seq.to_string())
                .json_data(&step),
            Ok(RunUpdate::Status(run)) => Event::default().event("status").json_data(&run),
            Err(e) => Event::default()
                .event("error")
                .json_data(json!({"code": e.code, "message": e.message})),
        };
        Ok::<_, Infallible>(event.unwrap_or_else(|_| Event::default().event("error")))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
