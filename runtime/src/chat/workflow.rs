//! Conversations answered by a workflow (a tenant whose `chat.defaultWorkflow` is set): each
//! user message starts a run with `{"message", "conversationId", "userId"}` as input, waits
//! for it to end or pause, and the run's outcome becomes the assistant's message.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::agents::store::{self, NewMessage, StoredMessage};
use crate::error::ApiError;
use crate::gateway::Caller;
use crate::orchestrator::api::{RunView, start};
use crate::orchestrator::{RunStatus, follow};
use crate::state::AppState;

/// How long a message waits for its run; a run still going is reported as such.
const WAIT: Duration = Duration::from_secs(30);

/// The answer of a workflow conversation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowAnswer {
    /// The assistant message that reports the run's outcome.
    message: StoredMessage,
    /// The run.
    run: RunView,
}

/// Starts the run, waits for it and stores the reply.
pub(super) async fn answer(
    state: &AppState,
    caller: &Caller,
    conversation: Uuid,
    workflow: &str,
    content: &str,
) -> Result<WorkflowAnswer, ApiError> {
    let input = json!({"message": content, "conversationId": conversation,
                       "userId": caller.user_id()});
    let run = start(state, caller, workflow, input, Some(conversation)).await?;
    let row = follow::settle(state, caller.tenant.id, run.id, WAIT).await?;
    let run = RunView::from_row(&row);
    let text = reply_text(&run);
    let mut tx = state.db.begin(caller.tenant.id).await?;
    let message = store::insert_message(
        &mut tx,
        caller,
        conversation,
        &NewMessage {
            role: "assistant",
            content: &text,
            ..NewMessage::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(WorkflowAnswer { message, run })
}

/// The message a person reads: the result's `message` or `answer` when it has one, the
/// result itself otherwise, or what the run waits for or why it ended.
fn reply_text(run: &RunView) -> String {
    match (run.status, &run.result) {
        (RunStatus::Succeeded, Some(Value::String(s))) => s.clone(),
        (RunStatus::Succeeded, Some(result)) => ["message", "answer", "reply"]
            .iter()
            .find_map(|k| result.get(k).and_then(Value::as_str))
            .map_or_else(|| result.to_string(), str::to_owned),
        (RunStatus::Waiting, _) => format!(
            "This request is waiting for a person ({}). Run {}.",
            run.wait.as_ref().map_or("", |w| w.message.as_str()),
            run.id
        ),
        (RunStatus::Pending | RunStatus::Running, _) => {
            format!("This request is still being worked on (run {}).", run.id)
        }
        (status, _) => format!(
            "This request ended {}: {}",
            status.as_str(),
            run.error.as_deref().unwrap_or("no details")
        ),
    }
}

/// JSON, or for an SSE client one `done` event with the same body.
pub(super) fn respond(answer: WorkflowAnswer, streaming: bool) -> Response {
    if !streaming {
        return Json(answer).into_response();
    }
    let event = Event::default()
        .event("done")
        .json_data(&answer)
        .unwrap_or_else(|_| Event::default().event("done"));
    Sse::new(futures::stream::iter([Ok::<_, Infallible>(event)])).into_response()
}
