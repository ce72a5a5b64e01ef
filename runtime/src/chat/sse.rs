//! The SSE answer of a message: the turn runs in a task of its own (so it completes and is
//! persisted even when the client goes away) and its progress is forwarded as events.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::agents::{Turn, TurnEvent};
use crate::gateway::Caller;
use crate::gateway::limits::StreamPermit;
use crate::state::AppState;

/// Starts the turn and answers its events, then `done` (or `error`).
pub(super) fn respond(
    state: AppState,
    caller: Caller,
    conversation: Uuid,
    agent: String,
    permit: StreamPermit,
) -> Response {
    let (tx, turn_rx) = mpsc::unbounded_channel::<TurnEvent>();
    let (done_tx, done_rx) = oneshot::channel::<Event>();
    tokio::spawn(async move {
        // Held until the turn ends: the stream slot frees with it.
        let _permit = permit;
        // The turn owns the sender and drops it when it returns, so the client sees every
        // event of the turn before `done`.
        let result = Box::pin(Turn::new(state, caller, conversation, agent, Some(tx)).run()).await;
        let last = match result {
            Ok(result) => Event::default()
                .event("done")
                .json_data(&result)
                .unwrap_or_else(|_| Event::default().event("done")),
            Err(e) => Event::default()
                .event("error")
                .json_data(json!({"code": e.code, "message": e.message}))
                .unwrap_or_else(|_| Event::default().event("error")),
        };
        let _ = done_tx.send(last);
    });
    let stream = futures::stream::unfold((turn_rx, Some(done_rx)), |(mut rx, done)| async move {
        if let Some(event) = rx.recv().await {
            return Some((Ok::<_, Infallible>(to_sse(&event)), (rx, done)));
        }
        let last = done?.await.ok()?;
        Some((Ok(last), (rx, None)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn to_sse(event: &TurnEvent) -> Event {
    let (name, data) = match event {
        TurnEvent::Token { delta } => ("token", json!({"delta": delta})),
        TurnEvent::ToolCall(c) => ("tool_call", json!(c)),
        TurnEvent::ToolResult {
            id,
            name,
            content,
            error,
        } => (
            "tool_result",
            json!({"id": id, "name": name, "content": content, "error": error}),
        ),
        TurnEvent::Handoff { from, to } => ("handoff", json!({"from": from, "to": to})),
        TurnEvent::ApprovalRequired(a) => ("approval_required", json!(a)),
    };
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name))
}
