//! Streamed chat completions in OpenAI's chunk format: a first chunk with the assistant role,
//! one chunk per text delta, the tool calls, a chunk with the finish reason, with
//! `stream_options.include_usage` a last chunk with the usage and no choices, then
//! `data: [DONE]`.
//!
//! The response starts only once the answer has: an error before that (a spent budget, a
//! token limit, every model failed) is answered as an HTTP error, as OpenAI does. A failure
//! after it started is a `data: {"error": {...}}` chunk.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use futures::stream;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::answer::Usage;
use super::{errors, wire};
use crate::agents::{TurnEvent, TurnUsage};
use crate::error::{ApiError, ApiResult};
use crate::llm::{Completion, ToolCall};

/// How an answer ended.
#[derive(Debug)]
pub(super) struct Finished {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: &'static str,
}

impl Finished {
    /// An agent turn: text only (its tools ran on the server).
    pub fn text(usage: TurnUsage) -> Self {
        Self {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            tool_calls: Vec::new(),
            finish_reason: "stop",
        }
    }

    /// One model call.
    pub fn completion(c: &Completion) -> Self {
        Self {
            input_tokens: u64::from(c.usage.input_tokens),
            output_tokens: u64::from(c.usage.output_tokens),
            tool_calls: c.tool_calls.clone(),
            finish_reason: wire::finish_reason(&c.finish_reason),
        }
    }
}

/// Where the answer's end arrives.
pub(super) type Done = oneshot::Receiver<Result<Finished, ApiError>>;

/// Writes the chunks of one answer.
///
/// A text delta is most of a stream's chunks (one per token), so its JSON is the escaped text
/// between a prefix and a suffix built once per answer, not a `Value` built per token.
#[derive(Debug)]
pub(super) struct Chunks {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    /// A text chunk up to its escaped text: `{"id":..,"choices":[{..,"delta":{"content":`.
    text_prefix: String,
    /// The rest of a text chunk after its text.
    text_suffix: &'static str,
}

impl Chunks {
    pub fn new(id: String, model: String, include_usage: bool) -> Arc<Self> {
        let created = chrono::Utc::now().timestamp();
        let text_prefix = format!(
            r#"{{"id":{},"object":"chat.completion.chunk","created":{created},"model":{},"choices":[{{"index":0,"delta":{{"content":"#,
            Value::from(id.as_str()),
            Value::from(model.as_str()),
        );
        // OpenAI sends `usage` (null until the last chunk) only when it was asked for.
        let text_suffix = if include_usage {
            r#"},"finish_reason":null}],"usage":null}"#
        } else {
            r#"},"finish_reason":null}]}"#
        };
        Arc::new(Self {
            id,
            model,
            created,
            include_usage,
            text_prefix,
            text_suffix,
        })
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk",
                               "created": self.created, "model": self.model,
                               "choices": choices});
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk.to_string()
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> String {
        self.chunk(
            json!([{"index": 0, "delta": delta, "finish_reason": finish}]),
            None,
        )
    }

    fn text(&self, text: &str) -> String {
        let mut chunk =
            Vec::with_capacity(self.text_prefix.len() + text.len() + 2 + self.text_suffix.len());
        chunk.extend_from_slice(self.text_prefix.as_bytes());
        // Writing a `&str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut chunk, text);
        chunk.extend_from_slice(self.text_suffix.as_bytes());
        // Built from UTF-8 strings and serde_json's escaping of one, so always valid; the
        // fallback keeps the text rather than drop it.
        String::from_utf8(chunk)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// The chunks after the last delta.
    fn end(
        &self,
        result: Result<Result<Finished, ApiError>, oneshot::error::RecvError>,
    ) -> Vec<String> {
        let finished = match result {
            Ok(Ok(finished)) => finished,
            Ok(Err(e)) => return vec![errors::render(&e).1.to_string()],
            Err(_) => {
                return vec![
                    errors::render(&ApiError::internal("the answer was lost"))
                        .1
                        .to_string(),
                ];
            }
        };
        let mut out = Vec::with_capacity(3);
        if !finished.tool_calls.is_empty() {
            let calls: Vec<Value> = finished
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"index": i, "id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            out.push(self.delta(json!({"tool_calls": calls}), None));
        }
        out.push(self.delta(json!({}), Some(finished.finish_reason)));
        if self.include_usage {
            out.push(self.chunk(json!([]), Some(json!(Usage::of(&finished)))));
        }
        out
    }
}

/// The next text delta, skipping the turn's other events; `None` once the turn has ended.
async fn next_text(rx: &mut mpsc::UnboundedReceiver<TurnEvent>) -> Option<Option<String>> {
    match rx.recv().await? {
        TurnEvent::Token { delta } => Some(Some(delta)),
        _ => Some(None),
    }
}

/// Waits for the answer to start, then streams it. An error before any event is the
/// response's error.
pub(super) async fn respond(
    chunks: Arc<Chunks>,
    mut rx: mpsc::UnboundedReceiver<TurnEvent>,
    done: Done,
) -> ApiResult<Response> {
    // Any event (a token, a tool call of an agent) means the model call was admitted and
    // answered; none before the end means the turn failed or produced nothing.
    let first = next_text(&mut rx).await;
    let (first, done) = match first {
        Some(first) => (first, done),
        None => match done.await {
            Ok(Err(e)) => return Err(e),
            ended => (None, oneshot_ready(ended)),
        },
    };
    let role = chunks.delta(json!({"role": "assistant", "content": ""}), None);
    let head: Vec<String> = std::iter::once(role)
        .chain(first.map(|t| chunks.text(&t)))
        .collect();
    let deltas = {
        let chunks = chunks.clone();
        stream::unfold(rx, move |mut rx| {
            let chunks = chunks.clone();
            async move {
                loop {
                    match next_text(&mut rx).await? {
                        Some(text) => return Some((chunks.text(&text), rx)),
                        None => continue,
                    }
                }
            }
        })
    };
    let end = stream::once(async move { chunks.end(done.await) }).flat_map(stream::iter);
    let events = stream::iter(head)
        .chain(deltas)
        .chain(end)
        .chain(stream::once(async { "[DONE]".to_owned() }))
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Ok(Sse::new(events).into_response())
}

/// A receiver that yields `result` at once (the end already arrived while waiting for the
/// start).
fn oneshot_ready(result: Result<Result<Finished, ApiError>, oneshot::error::RecvError>) -> Done {
    let (tx, rx) = oneshot::channel();
    if let Ok(result) = result {
        let _ = tx.send(result);
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_chunk_is_the_chunk_a_value_would_make() {
        for include_usage in [false, true] {
            let chunks = Chunks::new(
                "chatcmpl-\"1\"".to_owned(),
                "agent/süpport".to_owned(),
                include_usage,
            );
            for text in ["Hello", "", "a \"quoted\"\nline\\ with \u{1} and ünïcode ✓"] {
                let built: Value = serde_json::from_str(&chunks.text(text)).unwrap();
                let expected: Value =
                    serde_json::from_str(&chunks.delta(json!({"content": text}), None)).unwrap();
                assert_eq!(
                    built, expected,
                    "include_usage {include_usage}, text {text:?}"
                );
                assert_eq!(built["choices"][0]["delta"]["content"], text);
                assert_eq!(built.get("usage").is_some(), include_usage);
            }
        }
    }
}
