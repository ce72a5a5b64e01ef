//! The provider-neutral vocabulary of model calls: messages, tools, requests, completions and
//! stream events. Agents, workflows and chat speak these; providers translate them.

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions (system prompt, retrieved knowledge).
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool's result, answering one of the assistant's tool calls.
    Tool,
}

impl Role {
    /// The wire name (`system`, `user`, `assistant`, `tool`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text (empty for an assistant message that only calls tools).
    pub content: String,
    /// Tools the assistant asked to call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a [`Role::Tool`] message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with no tool calls.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message with text and tool calls.
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    /// The result of the tool call `call_id` (JSON text, usually).
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A tool the model asked to call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Id the tool result must quote.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as JSON text, exactly as the model wrote them (it may be invalid JSON: the
    /// caller validates).
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Name (what the model calls).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One model call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far, system messages first.
    pub messages: Vec<Message>,
    /// Tools offered, in order.
    #[serde(default)]
    pub tools: Vec<ToolDefinition>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Cap on output tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Ask for a single JSON object as the answer.
    #[serde(default)]
    pub json_mode: bool,
}

impl ChatRequest {
    /// A request made of `messages` with no tools and default sampling.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
}

/// Tokens consumed by one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

impl Usage {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.output_tokens)
    }
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end.
    Stop,
    /// It wants tools called.
    ToolCalls,
    /// `max_tokens` reached.
    Length,
    /// The provider filtered the output.
    ContentFilter,
    /// Anything else the provider said.
    Other(String),
}

impl FinishReason {
    /// Reads the OpenAI wire value.
    pub fn from_wire(value: &str) -> Self {
        match value {
            "stop" => Self::Stop,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "length" => Self::Length,
            "content_filter" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// The answer of a model call, with what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Text.
    pub content: String,
    /// Tools to call (the agent loop runs them and calls again).
    pub tool_calls: Vec<ToolCall>,
    /// Tokens (reported by the provider, or estimated when it reports none).
    pub usage: Usage,
    /// True when `usage` is an estimate.
    pub usage_estimated: bool,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Catalog name of the model that answered (a fallback when the primary failed).
    pub model: String,
    /// Provider that served it.
    pub provider: String,
    /// Cost in micro-dollars, from the model's prices.
    pub cost_micros: i64,
    /// Upstream calls made, failed ones and those on other models included.
    pub attempts: u32,
}

/// What a streamed call yields, in order: text deltas and tool calls as they come, then one
/// [`StreamEvent::Done`] with the whole completion.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A piece of text.
    Delta(String),
    /// A complete tool call (streamed argument fragments are assembled first).
    ToolCall(ToolCall),
    /// The end, with usage and cost.
    Done(Completion),
}
