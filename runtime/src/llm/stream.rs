//! A streamed completion. It accumulates what it yields so that its last event carries the
//! whole completion, and it reports usage exactly once however it ends: at the end, when it
//! breaks, or when the consumer drops it early (a client that disconnected still pays for the
//! tokens the provider generated).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;

use super::cost::{
    Prices, SharedUsageSink, UsageOutcome, UsageRecord, UsageSink, estimate_output_tokens,
};
use super::error::LlmError;
use super::provider::{ChunkStream, ProviderChunk};
use super::resilience::BreakerPermit;
use super::types::{Completion, FinishReason, StreamEvent, ToolCall, Usage};

/// Who served a stream and at what price.
#[derive(Clone, Debug)]
pub(crate) struct StreamMeta {
    pub(crate) tenant: String,
    pub(crate) model: String,
    pub(crate) provider: String,
    pub(crate) prices: Prices,
    pub(crate) attempts: u32,
    pub(crate) input_estimate: u32,
}

/// The events of a streamed call: [`StreamEvent::Delta`]s and [`StreamEvent::ToolCall`]s,
/// then one [`StreamEvent::Done`]; or an `Err` if the stream breaks after it started (it is
/// not retried then: the consumer already has part of the answer).
pub struct LlmStream {
    chunks: ChunkStream,
    first: Option<ProviderChunk>,
    meta: StreamMeta,
    content: String,
    tool_calls: Vec<ToolCall>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    /// The breaker's verdict waits for the end: a stream that starts well and then breaks
    /// is a failure.
    permit: Option<BreakerPermit>,
    sinks: Vec<SharedUsageSink>,
    finished: bool,
}

impl std::fmt::Debug for LlmStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmStream")
            .field("meta", &self.meta)
            .field("finished", &self.finished)
            .finish()
    }
}

impl LlmStream {
    pub(crate) fn new(
        chunks: ChunkStream,
        first: Option<ProviderChunk>,
        meta: StreamMeta,
        permit: BreakerPermit,
        sinks: Vec<SharedUsageSink>,
    ) -> Self {
        Self {
            chunks,
            first,
            meta,
            content: String::new(),
            tool_calls: Vec::new(),
            usage: None,
            finish: None,
            permit: Some(permit),
            sinks,
            finished: false,
        }
    }

    /// Catalog name of the model serving the stream.
    pub fn model(&self) -> &str {
        &self.meta.model
    }

    /// Provider serving the stream.
    pub fn provider(&self) -> &str {
        &self.meta.provider
    }

    /// Also sends this stream's usage record to `sink` (besides the gateway's sinks).
    pub fn with_usage_sink(mut self, sink: impl UsageSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Drains the stream into its completion.
    pub async fn into_completion(mut self) -> Result<Completion, LlmError> {
        use futures::StreamExt as _;
        while let Some(event) = self.next().await {
            if let StreamEvent::Done(completion) = event? {
                return Ok(completion);
            }
        }
        Err(LlmError::BadResponse {
            provider: self.meta.provider.clone(),
            message: "stream ended without a completion".to_owned(),
        })
    }

    /// Usage: as reported, else estimated from the request and what was received.
    fn usage(&self) -> (Usage, bool) {
        match self.usage {
            Some(usage) if usage.total() > 0 => (usage, false),
            _ => (
                Usage {
                    input_tokens: self.meta.input_estimate,
                    output_tokens: estimate_output_tokens(&self.content, &self.tool_calls),
                },
                true,
            ),
        }
    }

    fn report(&mut self, outcome: UsageOutcome) -> (Usage, bool, i64) {
        self.finished = true;
        let (usage, estimated) = self.usage();
        let cost_micros = self.meta.prices.cost_micros(usage);
        let record = UsageRecord {
            tenant: self.meta.tenant.clone(),
            model: self.meta.model.clone(),
            provider: self.meta.provider.clone(),
            usage,
            estimated,
            cost_micros,
            outcome,
            streamed: true,
            attempts: self.meta.attempts,
        };
        if let Some((last, rest)) = self.sinks.split_last() {
            for sink in rest {
                sink.record(record.clone());
            }
            last.record(record);
        }
        (usage, estimated, cost_micros)
    }

    fn complete(&mut self) -> Completion {
        let (usage, usage_estimated, cost_micros) = self.report(UsageOutcome::Completed);
        let finish_reason = self.finish.take().unwrap_or(if self.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        });
        Completion {
            content: std::mem::take(&mut self.content),
            tool_calls: std::mem::take(&mut self.tool_calls),
            usage,
            usage_estimated,
            finish_reason,
            model: self.meta.model.clone(),
            provider: self.meta.provider.clone(),
            cost_micros,
            attempts: self.meta.attempts,
        }
    }
}

impl Stream for LlmStream {
    type Item = Result<StreamEvent, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let chunk = match this.first.take() {
                Some(chunk) => Some(Ok(chunk)),
                None => match this.chunks.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(item) => item,
                },
            };
            match chunk {
                None => {
                    if let Some(permit) = this.permit.take() {
                        permit.success();
                    }
                    return Poll::Ready(Some(Ok(StreamEvent::Done(this.complete()))));
                }
                Some(Err(error)) => {
                    if let Some(permit) = this.permit.take()
                        && error.is_provider_failure()
                    {
                        permit.failure();
                    }
                    this.report(UsageOutcome::Failed);
                    return Poll::Ready(Some(Err(error)));
                }
                Some(Ok(ProviderChunk::Delta(text))) => {
                    this.content.push_str(&text);
                    return Poll::Ready(Some(Ok(StreamEvent::Delta(text))));
                }
                Some(Ok(ProviderChunk::ToolCall(call))) => {
                    this.tool_calls.push(call.clone());
                    return Poll::Ready(Some(Ok(StreamEvent::ToolCall(call))));
                }
                Some(Ok(ProviderChunk::Usage(usage))) => this.usage = Some(usage),
                Some(Ok(ProviderChunk::Finish(reason))) => this.finish = Some(reason),
            }
        }
    }
}

impl Drop for LlmStream {
    fn drop(&mut self) {
        // A cancelled stream's permit is dropped with no verdict: a consumer leaving says
        // nothing about the provider.
        if !self.finished {
            self.report(UsageOutcome::Cancelled);
        }
    }
}
