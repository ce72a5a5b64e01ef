//! The OpenAI chat-completions request as clients send it, and its translation into the
//! runtime's [`ChatRequest`] vocabulary. Fields not listed here are accepted and ignored
//! (`docs/openai-compat.md` lists both).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::llm::{FinishReason, Message, ToolCall, ToolDefinition};

/// An OpenAI chat message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct OpenAiMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    role: String,
    /// Text, or an array of content parts of which only `text` parts are supported.
    #[serde(default)]
    #[schema(value_type = Object)]
    content: Option<Content>,
    /// An assistant message's tool calls (catalog models).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    tool_calls: Vec<WireToolCall>,
    /// A tool message: the call it answers.
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

/// A tool the client offers (`{"type": "function", "function": {...}}`).
#[derive(Debug, Deserialize)]
pub struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    function: WireToolFunction,
}

#[derive(Debug, Deserialize)]
struct WireToolFunction {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage (and `usage: null` on the others).
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    kind: String,
}

/// An OpenAI chat-completions request (the fields this runtime reads; others are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionsRequest {
    /// `agent/<name>` or a catalog model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<OpenAiMessage>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// `{"include_usage": true}` adds a last chunk with the usage.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<StreamOptions>,
    /// Output cap (catalog models).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Output cap, the newer name (catalog models; `max_tokens` wins when both are given).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature (catalog models).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Function tools the model may call (catalog models; agents bring their own).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<WireTool>>,
    /// `"none"` withholds the tools; other values are treated as `"auto"`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// `{"type": "json_object"}` (or `json_schema`, whose schema is not enforced) asks for
    /// one JSON object (catalog models).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<ResponseFormat>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).with_param(param)
}

impl CompletionsRequest {
    /// The messages in the runtime's vocabulary; 400 naming `messages` for a role or content
    /// this surface does not take.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let text = m.text().map_err(|e| invalid("messages", format!("messages[{i}]: {e}")))?;
                Ok(match m.role.as_str() {
                    "system" | "developer" => Message::system(text),
                    "user" => Message::user(text),
                    "assistant" => Message::assistant(
                        text,
                        m.tool_calls
                            .iter()
                            .map(|c| ToolCall {
                                id: c.id.clone(),
                                name: c.function.name.clone(),
                                arguments: c.function.arguments.clone(),
                            })
                            .collect(),
                    ),
                    "tool" => {
                        let Some(id) = &m.tool_call_id else {
                            return Err(invalid(
                                "messages",
                                format!("messages[{i}]: a tool message needs tool_call_id"),
                            ));
                        };
                        Message::tool_result(id.clone(), text)
                    }
                    other => {
                        return Err(invalid(
                            "messages",
                            format!(
                                "messages[{i}]: role {other:?} is not supported (system, developer, user, assistant, tool)"
                            ),
                        ));
                    }
                })
            })
            .collect()
    }

    /// The tools offered to the model (none with `tool_choice: "none"`).
    pub fn tools(&self) -> Result<Vec<ToolDefinition>, ApiError> {
        if self.tool_choice.as_ref().and_then(Value::as_str) == Some("none") {
            return Ok(Vec::new());
        }
        self.tools
            .iter()
            .flatten()
            .map(|t| {
                if t.kind != "function" {
                    return Err(invalid(
                        "tools",
                        format!("tool type {:?} is not supported (function)", t.kind),
                    ));
                }
                Ok(ToolDefinition {
                    name: t.function.name.clone(),
                    description: t.function.description.clone(),
                    parameters: t
                        .function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                })
            })
            .collect()
    }

    /// Whether the client offered tools.
    pub fn has_tools(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// The output cap.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_tokens.or(self.max_completion_tokens)
    }

    /// Whether one JSON object is asked for.
    pub fn json_mode(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(|f| f.kind == "json_object" || f.kind == "json_schema")
    }

    /// Whether streams end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

impl OpenAiMessage {
    fn text(&self) -> Result<String, String> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(text)) => Ok(text.clone()),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(piece)) => text.push_str(piece),
                        ("text", None) => return Err("a text part needs text".to_owned()),
                        (other, _) => {
                            return Err(format!(
                                "content parts of type {other:?} are not supported (text only)"
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Stop | FinishReason::Other(_) => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Role;

    fn request(body: Value) -> CompletionsRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn messages_tools_and_options_translate() {
        let r = request(json!({
            "model": "small",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}],
            "max_completion_tokens": 7,
            "response_format": {"type": "json_object"},
            "stream_options": {"include_usage": true},
            "n": 1, "seed": 3, "user": "u-1"
        }));
        let messages = r.messages().unwrap();
        assert_eq!(
            messages.iter().map(|m| m.role).collect::<Vec<_>>(),
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(messages[1].content, "Hi there");
        assert_eq!(messages[2].tool_calls[0].name, "f");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("c1"));
        let tools = r.tools().unwrap();
        assert_eq!(tools[0].parameters["type"], "object");
        assert_eq!(r.max_tokens(), Some(7));
        assert!(r.json_mode() && r.include_usage() && r.has_tools());
    }

    #[test]
    fn unsupported_input_names_the_field() {
        let r = request(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}));
        let e = r.messages().unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(e.message.contains("image_url"), "{}", e.message);
        let r = request(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}));
        assert!(r.messages().unwrap_err().message.contains("tool_call_id"));
        let r = request(
            json!({"model": "m", "messages": [], "tools": [{"type": "code", "function": {"name": "x"}}]}),
        );
        assert_eq!(r.tools().unwrap_err().param, Some("tools"));
        let r = request(json!({"model": "m", "messages": [], "tool_choice": "none",
                               "tools": [{"type": "function", "function": {"name": "x"}}]}));
        assert!(r.tools().unwrap().is_empty());
    }
}
