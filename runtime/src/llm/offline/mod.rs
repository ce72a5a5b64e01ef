//! The built-in offline provider (provider type `builtin`): deterministic, no network, no
//! randomness. It answers from the conversation and from knowledge in the system prompt, and
//! follows the documented rules of `docs/llm.md` to request tools, so that agents, tools and
//! workflows run end to end with no API key. Token counts come from the documented estimator,
//! so cost accounting works offline too.

mod rules;
mod text;

use futures::StreamExt as _;
use futures::future::BoxFuture;

pub use rules::{HANDOFF_MARKER, KNOWLEDGE_MARKER};

use super::cost::{estimate_input_tokens, estimate_output_tokens, estimate_text_tokens};
use super::error::LlmError;
use super::provider::{ChunkStream, Provider, ProviderChunk, ProviderReply};
use super::types::{ChatRequest, FinishReason, Usage};

/// The offline provider.
#[derive(Debug)]
pub struct OfflineProvider {
    name: String,
    patterns: rules::Patterns,
}

impl OfflineProvider {
    /// An offline provider named `name` (its name in the tenant's catalog).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            patterns: rules::Patterns::default(),
        }
    }

    /// The answer to `request`: the same request always gets the same reply.
    pub fn reply(&self, request: &ChatRequest) -> ProviderReply {
        let (content, tool_calls, finish_reason) = match rules::answer(request, &self.patterns) {
            rules::Answer::Call(call) => (String::new(), vec![call], FinishReason::ToolCalls),
            rules::Answer::Text(content) => truncate(content, request),
        };
        let usage = Usage {
            input_tokens: estimate_input_tokens(request),
            output_tokens: estimate_output_tokens(&content, &tool_calls),
        };
        ProviderReply {
            content,
            tool_calls,
            usage: Some(usage),
            finish_reason,
        }
    }
}

/// Honours `max_tokens` for text answers (not JSON ones, which must stay whole): at most
/// `4 × max_tokens` characters, cut back to the last whole word when there is one, with
/// finish reason `length`.
fn truncate(
    content: String,
    request: &ChatRequest,
) -> (String, Vec<super::ToolCall>, FinishReason) {
    match request.max_tokens {
        Some(max) if !request.json_mode && estimate_text_tokens(&content) > max => {
            let limit = usize::try_from(max).unwrap_or(usize::MAX).saturating_mul(4);
            let end = content
                .char_indices()
                .nth(limit)
                .map_or(content.len(), |(i, _)| i);
            let mut cut = &content[..end];
            if !content[end..].starts_with(char::is_whitespace)
                && let Some(space) = cut.rfind(char::is_whitespace)
            {
                cut = &cut[..space];
            }
            (cut.trim_end().to_owned(), Vec::new(), FinishReason::Length)
        }
        _ => (content, Vec::new(), FinishReason::Stop),
    }
}

/// Splits text into words, each keeping the whitespace that follows it, so that the pieces
/// concatenate back to the text.
fn word_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            pieces.push(text[start..i].to_owned());
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        pieces.push(text[start..].to_owned());
    }
    pieces
}

impl Provider for OfflineProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        _upstream_model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, LlmError>> {
        Box::pin(std::future::ready(Ok(self.reply(request))))
    }

    fn stream<'a>(
        &'a self,
        _upstream_model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, LlmError>> {
        let reply = self.reply(request);
        let mut chunks: Vec<Result<ProviderChunk, LlmError>> = word_pieces(&reply.content)
            .into_iter()
            .map(|piece| Ok(ProviderChunk::Delta(piece)))
            .collect();
        chunks.extend(
            reply
                .tool_calls
                .into_iter()
                .map(|call| Ok(ProviderChunk::ToolCall(call))),
        );
        chunks.push(Ok(ProviderChunk::Finish(reply.finish_reason)));
        if let Some(usage) = reply.usage {
            chunks.push(Ok(ProviderChunk::Usage(usage)));
        }
        Box::pin(std::future::ready(
            Ok(futures::stream::iter(chunks).boxed()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_back() {
        for text in ["", "one", "I can  help\nwith that ", "  lead"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces("a b"), ["a ", "b"]);
    }
}
