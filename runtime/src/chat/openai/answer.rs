//! The non-streamed answer: OpenAI's `chat.completion` object, serialized straight from the
//! answer's borrowed fields. (Built as a `serde_json::Value` tree it cost about 3 % of a
//! catalog completion's CPU: a map allocated per object, then walked again to serialize.)

use serde::Serialize;

use super::sse::Finished;
use crate::llm::ToolCall;

/// `{"id", "object": "chat.completion", "created", "model", "choices": [..], "usage"}`.
#[derive(Debug, Serialize)]
pub(super) struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    /// `null` when the answer is tool calls without text, as OpenAI sends it.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: Vec<FunctionCall<'a>>,
}

/// `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Serialize)]
struct FunctionCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCallBody<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionCallBody<'a> {
    name: &'a str,
    arguments: &'a str,
}

impl<'a> FunctionCall<'a> {
    fn of(call: &'a ToolCall) -> Self {
        Self {
            id: &call.id,
            kind: "function",
            function: FunctionCallBody {
                name: &call.name,
                arguments: &call.arguments,
            },
        }
    }
}

/// OpenAI's `usage` object.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    pub fn of(finished: &Finished) -> Self {
        Self {
            prompt_tokens: finished.input_tokens,
            completion_tokens: finished.output_tokens,
            total_tokens: finished.input_tokens + finished.output_tokens,
        }
    }
}

impl<'a> Completion<'a> {
    pub fn new(id: &'a str, model: &'a str, content: &'a str, finished: &'a Finished) -> Self {
        let tool_calls: Vec<FunctionCall<'a>> =
            finished.tool_calls.iter().map(FunctionCall::of).collect();
        let content = (tool_calls.is_empty() || !content.is_empty()).then_some(content);
        Self {
            id,
            object: "chat.completion",
            created: chrono::Utc::now().timestamp(),
            model,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                finish_reason: finished.finish_reason,
            }],
            usage: Usage::of(finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn finished(tool_calls: Vec<ToolCall>, finish_reason: &'static str) -> Finished {
        Finished {
            input_tokens: 7,
            output_tokens: 3,
            tool_calls,
            finish_reason,
        }
    }

    fn without_created(completion: &Completion<'_>) -> Value {
        let mut value = serde_json::to_value(completion).unwrap();
        assert!(value["created"].as_i64().unwrap() > 0);
        value.as_object_mut().unwrap().remove("created");
        value
    }

    #[test]
    fn a_text_answer_is_openais_completion_object() {
        let done = finished(Vec::new(), "stop");
        let completion = Completion::new("chatcmpl-1", "fast", "Hi \"there\"\n", &done);
        assert_eq!(
            without_created(&completion),
            json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "fast",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "Hi \"there\"\n"}}],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
        );
    }

    #[test]
    fn tool_calls_without_text_have_null_content() {
        let call = ToolCall {
            id: "call_0".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"x"}"#.into(),
        };
        let done = finished(vec![call], "tool_calls");
        let message = &without_created(&Completion::new("c", "m", "", &done))["choices"][0];
        assert_eq!(
            message["message"],
            json!({"role": "assistant", "content": null,
                   "tool_calls": [{"id": "call_0", "type": "function",
                                   "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]})
        );
        assert_eq!(message["finish_reason"], "tool_calls");
        let with_text = Completion::new("c", "m", "checking", &done);
        assert_eq!(
            without_created(&with_text)["choices"][0]["message"]["content"],
            "checking"
        );
    }
}
