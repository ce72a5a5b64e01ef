//! The JSON messages of `/ws/chat` (see docs/realtime.md): what a client sends, and how
//! server events are written. Every server event names its conversation so that several
//! conversations can share one socket.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::agents::{TurnEvent, TurnResult};

/// A message from the client.
#[derive(Debug, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    /// A user message to answer in a conversation.
    Message {
        /// The conversation (created with the REST API).
        conversation_id: Uuid,
        /// Text (1 byte to 32 KiB).
        content: String,
        /// The client's correlation id, echoed in every event of the turn.
        id: Option<String>,
    },
    /// Stops the conversation's running turn.
    Cancel {
        /// The conversation.
        conversation_id: Uuid,
    },
    /// Follows a workflow run: its steps (`run_step`) and status changes (`run_status`)
    /// until it ends (scope `workflows`).
    Subscribe {
        /// The run.
        run_id: Uuid,
    },
    /// Stops following a run.
    Unsubscribe {
        /// The run.
        run_id: Uuid,
    },
    /// Asks for a `pong`.
    Ping {
        /// Echoed in the `pong`.
        id: Option<String>,
    },
}

/// Names a server event's turn: the conversation and the client's correlation id.
#[derive(Debug, Clone)]
pub struct TurnRef {
    /// Conversation.
    pub conversation: Uuid,
    /// Client correlation id.
    pub id: Option<String>,
}

impl TurnRef {
    /// A server event of type `kind` with `fields` merged in.
    pub fn event(&self, kind: &str, fields: Value) -> String {
        let mut object = Map::new();
        object.insert("type".to_owned(), json!(kind));
        object.insert("conversationId".to_owned(), json!(self.conversation));
        if let Some(id) = &self.id {
            object.insert("id".to_owned(), json!(id));
        }
        if let Value::Object(extra) = fields {
            object.extend(extra);
        }
        Value::Object(object).to_string()
    }

    /// A `token` event.
    pub fn token(&self, delta: &str) -> String {
        self.event("token", json!({"delta": delta}))
    }

    /// The event of a turn's progress (anything but a token, which is coalesced apart).
    pub fn turn_event(&self, event: &TurnEvent) -> String {
        match event {
            TurnEvent::Token { delta } => self.token(delta),
            TurnEvent::ToolCall(c) => self.event("tool_call", json!({"toolCall": c})),
            TurnEvent::ToolResult {
                id,
                name,
                content,
                error,
            } => self.event(
                "tool_result",
                json!({"toolCallId": id, "name": name, "content": content, "error": error}),
            ),
            TurnEvent::Handoff { from, to } => {
                self.event("handoff", json!({"from": from, "to": to}))
            }
            TurnEvent::ApprovalRequired(a) => {
                self.event("approval_required", json!({"approval": a}))
            }
        }
    }

    /// The `done` event of a finished turn: the turn's result, usage included.
    pub fn done(&self, result: &TurnResult) -> String {
        let mut fields = serde_json::to_value(result).unwrap_or_else(|_| json!({}));
        if let Value::Object(o) = &mut fields {
            o.insert("cancelled".to_owned(), json!(false));
        }
        self.event("done", fields)
    }

    /// The `done` event of a cancelled turn.
    pub fn cancelled(&self) -> String {
        self.event("done", json!({"cancelled": true, "usage": null}))
    }

    /// An `error` event about this turn.
    pub fn error(&self, code: &str, message: &str) -> String {
        self.event("error", json!({"code": code, "message": message}))
    }
}

/// An `error` event not tied to a conversation (bad JSON, unknown type).
pub fn error(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

/// A `run_step`, `run_status` or `run_error` event of a followed workflow run.
pub fn run_event(kind: &str, run: Uuid, fields: Value) -> String {
    let mut object = Map::new();
    object.insert("type".to_owned(), json!(kind));
    object.insert("runId".to_owned(), json!(run));
    if let Value::Object(extra) = fields {
        object.extend(extra);
    }
    Value::Object(object).to_string()
}

/// The answer to a `ping`.
pub fn pong(id: Option<&str>) -> String {
    match id {
        Some(id) => json!({"type": "pong", "id": id}).to_string(),
        None => json!({"type": "pong"}).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse() {
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"message","conversationId":"0190b6a8-0000-7000-8000-000000000001","content":"hi","id":"c1"}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ClientMessage::Message { ref content, ref id, .. }
            if content == "hi" && id.as_deref() == Some("c1"))
        );
        let p: ClientMessage = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert!(matches!(p, ClientMessage::Ping { id: None }));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"shout"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"cancel"}"#).is_err());
        let sub: ClientMessage = serde_json::from_str(
            r#"{"type":"subscribe","runId":"0190b6a8-0000-7000-8000-000000000001"}"#,
        )
        .unwrap();
        assert!(matches!(sub, ClientMessage::Subscribe { .. }));
    }

    #[test]
    fn events_name_their_conversation() {
        let t = TurnRef {
            conversation: Uuid::nil(),
            id: Some("c1".to_owned()),
        };
        let v: Value = serde_json::from_str(&t.token("he")).unwrap();
        assert_eq!(v["type"], "token");
        assert_eq!(v["conversationId"], Uuid::nil().to_string());
        assert_eq!(v["id"], "c1");
        assert_eq!(v["delta"], "he");
    }
}
