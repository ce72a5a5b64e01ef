//! The one trait every model provider implements. It is object-safe (`Arc<dyn Provider>`):
//! futures and streams are boxed, so the gateway holds providers of any kind side by side.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::error::LlmError;
use super::types::{ChatRequest, FinishReason, ToolCall, Usage};

/// The answer of one upstream call, before the gateway adds model, cost and attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderReply {
    /// Text.
    pub content: String,
    /// Tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Usage as reported by the provider; `None` when it reported none (the gateway
    /// estimates it then).
    pub usage: Option<Usage>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// One piece of a streamed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderChunk {
    /// Text.
    Delta(String),
    /// A whole tool call (a provider assembles streamed fragments before yielding it).
    ToolCall(ToolCall),
    /// Usage reported by the provider (usually the last chunk).
    Usage(Usage),
    /// Why it stopped.
    Finish(FinishReason),
}

/// A stream of chunks; it ends after the last one.
pub type ChunkStream = BoxStream<'static, Result<ProviderChunk, LlmError>>;

/// A model provider.
pub trait Provider: Send + Sync + 'static {
    /// The provider's name in the tenant's catalog (for errors and metrics).
    fn name(&self) -> &str;

    /// One non-streamed call of `upstream_model`.
    fn complete<'a>(
        &'a self,
        upstream_model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, LlmError>>;

    /// Starts a streamed call of `upstream_model`. An error before the first chunk is returned
    /// here (so it can be retried); a failure later is an `Err` item of the stream.
    fn stream<'a>(
        &'a self,
        upstream_model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, LlmError>>;
}

impl std::fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name())
            .finish()
    }
}
