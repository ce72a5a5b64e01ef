//! Server-sent events of an OpenAI-compatible stream: `data: {json}` events ending with
//! `data: [DONE]`. Tool calls arrive as fragments keyed by index (id and name first, the
//! arguments in pieces); they are assembled and yielded whole when the choice finishes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde::Deserialize;

use super::error::{LlmError, sanitize};
use super::provider::{ChunkStream, ProviderChunk};
use super::types::{FinishReason, ToolCall, Usage};

/// Token counts on the wire.
#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl WireUsage {
    pub(crate) fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
        }
    }
}

/// Splits a byte stream into event payloads (the `data` lines of each event, joined by `\n`).
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buffer: Vec<u8>,
    data: String,
}

impl SseDecoder {
    /// Feeds bytes; complete events are appended to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        self.buffer.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let end = start + offset;
            let line = &self.buffer[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Self::line(&mut self.data, line, out);
            start = end + 1;
        }
        self.buffer.drain(..start);
    }

    /// The end of the body: a last event without its blank line still counts.
    pub(crate) fn finish(&mut self, out: &mut Vec<String>) {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
            Self::line(&mut self.data, line, out);
        }
        if !self.data.is_empty() {
            out.push(std::mem::take(&mut self.data));
        }
    }

    fn line(data: &mut String, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            if !data.is_empty() {
                out.push(std::mem::take(data));
            }
            return;
        }
        // Comments (":" keep-alives) and fields other than data are ignored.
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(&String::from_utf8_lossy(value));
        }
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Turns event payloads into chunks, assembling tool-call fragments.
pub(crate) struct ChunkAssembler {
    provider: String,
    calls: BTreeMap<u32, PartialCall>,
    /// `[DONE]` seen.
    pub(crate) done: bool,
}

impl ChunkAssembler {
    pub(crate) fn new(provider: String) -> Self {
        Self {
            provider,
            calls: BTreeMap::new(),
            done: false,
        }
    }

    /// Reads one event payload.
    pub(crate) fn event(
        &mut self,
        data: &str,
        out: &mut VecDeque<ProviderChunk>,
    ) -> Result<(), LlmError> {
        if data.trim() == "[DONE]" {
            self.flush(out);
            self.done = true;
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| LlmError::BadResponse {
            provider: self.provider.clone(),
            message: format!("invalid stream chunk: {e}"),
        })?;
        if let Some(error) = chunk.error {
            return Err(LlmError::BadResponse {
                provider: self.provider.clone(),
                message: format!(
                    "stream error: {}",
                    sanitize(&serde_json::json!({ "error": error }).to_string(), None)
                ),
            });
        }
        // Only the first choice is used (n = 1 is never changed).
        if let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) {
            if let Some(content) = choice.delta.content
                && !content.is_empty()
            {
                out.push_back(ProviderChunk::Delta(content));
            }
            for (position, fragment) in choice.delta.tool_calls.into_iter().enumerate() {
                let index = fragment
                    .index
                    .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
                let call = self.calls.entry(index).or_default();
                if let Some(id) = fragment.id {
                    call.id = id;
                }
                if let Some(function) = fragment.function {
                    if let Some(name) = function.name {
                        call.name.push_str(&name);
                    }
                    if let Some(arguments) = function.arguments {
                        call.arguments.push_str(&arguments);
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.flush(out);
                out.push_back(ProviderChunk::Finish(FinishReason::from_wire(&reason)));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push_back(ProviderChunk::Usage(usage.into_usage()));
        }
        Ok(())
    }

    /// Yields the assembled tool calls, in index order.
    pub(crate) fn flush(&mut self, out: &mut VecDeque<ProviderChunk>) {
        for (index, call) in std::mem::take(&mut self.calls) {
            out.push_back(ProviderChunk::ToolCall(ToolCall {
                id: if call.id.is_empty() {
                    format!("call_{index}")
                } else {
                    call.id
                },
                name: call.name,
                arguments: call.arguments,
            }));
        }
    }
}

struct State {
    body: BoxStream<'static, Result<Bytes, String>>,
    decoder: SseDecoder,
    assembler: ChunkAssembler,
    pending: VecDeque<ProviderChunk>,
    events: Vec<String>,
    idle: Duration,
    finished: bool,
}

impl State {
    fn fail(&mut self, error: LlmError) -> Option<Result<ProviderChunk, LlmError>> {
        self.finished = true;
        self.pending.clear();
        Some(Err(error))
    }

    async fn next(&mut self) -> Option<Result<ProviderChunk, LlmError>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(Ok(chunk));
            }
            if self.finished {
                return None;
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    return self.fail(LlmError::Timeout {
                        provider: self.assembler.provider.clone(),
                        timeout_ms: u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                Ok(Some(Err(message))) => {
                    return self.fail(LlmError::Connect {
                        provider: self.assembler.provider.clone(),
                        message,
                    });
                }
                Ok(Some(Ok(bytes))) => self.decoder.push(&bytes, &mut self.events),
                Ok(None) => {
                    self.decoder.finish(&mut self.events);
                    self.finished = true;
                }
            }
            for data in std::mem::take(&mut self.events) {
                if self.assembler.done {
                    break;
                }
                if let Err(error) = self.assembler.event(&data, &mut self.pending) {
                    return self.fail(error);
                }
            }
            if self.assembler.done || self.finished {
                // [DONE], or the body ended without it: whatever was assembled is final.
                self.assembler.flush(&mut self.pending);
                self.finished = true;
            }
        }
    }
}

/// The chunks of an SSE body; `idle` bounds every wait for more bytes.
pub(crate) fn chunks(
    provider: String,
    body: BoxStream<'static, Result<Bytes, String>>,
    idle: Duration,
) -> ChunkStream {
    let state = State {
        body,
        decoder: SseDecoder::default(),
        assembler: ChunkAssembler::new(provider),
        pending: VecDeque::new(),
        events: Vec::new(),
        idle,
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
    .boxed()
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: WireDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCallDelta>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_split_anywhere() {
        let body = b"data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\ndata: [DONE]";
        for split in 0..body.len() {
            let mut decoder = SseDecoder::default();
            let mut out = Vec::new();
            decoder.push(&body[..split], &mut out);
            decoder.push(&body[split..], &mut out);
            decoder.finish(&mut out);
            assert_eq!(out, ["{\"a\":1}", "x\ny", "[DONE]"], "split at {split}");
        }
    }

    #[test]
    fn assembles_tool_call_fragments_by_index() {
        let mut assembler = ChunkAssembler::new("p".into());
        let mut out = VecDeque::new();
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"two","arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"one","arguments":"{\"x\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}},{"index":1,"function":{"arguments":"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            assembler.event(data, &mut out).unwrap();
        }
        let call = |id: &str, name: &str, arguments: &str| {
            ProviderChunk::ToolCall(ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            })
        };
        assert_eq!(
            Vec::from(out),
            vec![
                ProviderChunk::Delta("Hi".into()),
                call("a", "one", "{\"x\":1}"),
                call("b", "two", "{}"),
                ProviderChunk::Finish(FinishReason::ToolCalls),
                ProviderChunk::Usage(Usage {
                    input_tokens: 5,
                    output_tokens: 2
                }),
            ]
        );
        assert!(assembler.done);
        let err = assembler
            .event(
                r#"{"error":{"message":"overloaded"}}"#,
                &mut VecDeque::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("overloaded"));
    }
}
