//! Token estimates, cost in integer micro-dollars, and the usage records that metering
//! receives for every call: completed, streamed, cancelled or failed mid-stream.

use std::sync::Arc;

use agentry_crds::bundle::ModelConfig;
use serde::{Deserialize, Serialize};

use super::types::{ChatRequest, Message, ToolCall, Usage};

/// Tokens added per message for the role and framing (the estimator's overhead).
pub const MESSAGE_OVERHEAD_TOKENS: u32 = 4;

/// Estimated tokens of a text: one per four characters (Unicode scalar values), rounded up.
/// It is the usual rule of thumb for English with BPE tokenizers; it is an estimate, used only
/// when a provider reports no usage and by the offline provider.
pub fn estimate_text_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Estimated tokens of one message: its text, its tool calls (name and arguments), and
/// [`MESSAGE_OVERHEAD_TOKENS`].
pub fn estimate_message_tokens(message: &Message) -> u32 {
    let calls: u32 = message
        .tool_calls
        .iter()
        .map(estimate_tool_call_tokens)
        .sum();
    estimate_text_tokens(&message.content)
        .saturating_add(calls)
        .saturating_add(MESSAGE_OVERHEAD_TOKENS)
}

/// Estimated tokens of a tool call's name and arguments.
pub fn estimate_tool_call_tokens(call: &ToolCall) -> u32 {
    estimate_text_tokens(&call.name).saturating_add(estimate_text_tokens(&call.arguments))
}

/// Estimated input tokens of a request: every message, plus each offered tool's name,
/// description and JSON-Schema text.
pub fn estimate_input_tokens(request: &ChatRequest) -> u32 {
    let messages: u32 = request.messages.iter().map(estimate_message_tokens).sum();
    let tools: u32 = request
        .tools
        .iter()
        .map(|t| {
            estimate_text_tokens(&t.name)
                .saturating_add(estimate_text_tokens(&t.description))
                .saturating_add(estimate_text_tokens(&t.parameters.to_string()))
        })
        .sum();
    messages.saturating_add(tools)
}

/// Estimated output tokens of an answer: its text and tool calls.
pub fn estimate_output_tokens(content: &str, tool_calls: &[ToolCall]) -> u32 {
    let calls: u32 = tool_calls.iter().map(estimate_tool_call_tokens).sum();
    estimate_text_tokens(content).saturating_add(calls)
}

/// Prices of a model in micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prices {
    /// Per million input tokens.
    pub input_micros_per_mtok: i64,
    /// Per million output tokens.
    pub output_micros_per_mtok: i64,
}

impl From<&ModelConfig> for Prices {
    fn from(model: &ModelConfig) -> Self {
        Self {
            input_micros_per_mtok: model.input_micros_per_mtok,
            output_micros_per_mtok: model.output_micros_per_mtok,
        }
    }
}

impl Prices {
    /// Cost of `usage` in micro-dollars: `(input × input price + output × output price) / 10⁶`,
    /// rounded up once over the exact sum, so that any non-zero usage of a priced model costs
    /// at least one micro-dollar and the total is never under the true cost by a fraction.
    pub fn cost_micros(&self, usage: Usage) -> i64 {
        let exact = i128::from(usage.input_tokens) * i128::from(self.input_micros_per_mtok.max(0))
            + i128::from(usage.output_tokens) * i128::from(self.output_micros_per_mtok.max(0));
        let micros = (exact + 999_999) / 1_000_000;
        i64::try_from(micros).unwrap_or(i64::MAX)
    }
}

/// How a metered call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageOutcome {
    /// The answer was complete.
    Completed,
    /// The consumer dropped the stream before its end.
    Cancelled,
    /// The stream broke after it had started.
    Failed,
}

/// What one model call consumed; sent to the [`UsageSink`]s exactly once per call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Tenant name.
    pub tenant: String,
    /// Catalog name of the model that answered.
    pub model: String,
    /// Provider name.
    pub provider: String,
    /// Tokens.
    pub usage: Usage,
    /// True when the tokens are estimates (the provider reported none, or the stream was cut
    /// before its usage chunk).
    pub estimated: bool,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// How it ended.
    pub outcome: UsageOutcome,
    /// Whether it was streamed.
    pub streamed: bool,
    /// Upstream calls made.
    pub attempts: u32,
}

/// Receives usage records. Called from `Drop` of a cancelled stream, so it must not block:
/// hand the record to a channel or a counter, and do I/O elsewhere.
pub trait UsageSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, record: UsageRecord);
}

impl UsageSink for tokio::sync::mpsc::UnboundedSender<UsageRecord> {
    fn record(&self, record: UsageRecord) {
        // A closed receiver means metering shut down; the record has nowhere to go.
        let _ = self.send(record);
    }
}

impl<F> UsageSink for F
where
    F: Fn(UsageRecord) + Send + Sync + 'static,
{
    fn record(&self, record: UsageRecord) {
        self(record);
    }
}

/// A shared sink.
pub type SharedUsageSink = Arc<dyn UsageSink>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_once() {
        let prices = Prices {
            input_micros_per_mtok: 150_000,
            output_micros_per_mtok: 600_000,
        };
        let usage = |input_tokens, output_tokens| Usage {
            input_tokens,
            output_tokens,
        };
        assert_eq!(prices.cost_micros(usage(0, 0)), 0);
        // 1 × 0.15 = 0.15 µ$ → 1
        assert_eq!(prices.cost_micros(usage(1, 0)), 1);
        // 10 × 0.15 + 1 × 0.6 = 2.1 → 3
        assert_eq!(prices.cost_micros(usage(10, 1)), 3);
        // exact: 1M input = 150000, 1M output = 600000
        assert_eq!(prices.cost_micros(usage(1_000_000, 1_000_000)), 750_000);
        // 999_999 × 0.15 = 149_999.85 → 150_000
        assert_eq!(prices.cost_micros(usage(999_999, 0)), 150_000);
        let free = Prices::default();
        assert_eq!(free.cost_micros(usage(1000, 1000)), 0);
        let huge = Prices {
            input_micros_per_mtok: i64::MAX,
            output_micros_per_mtok: i64::MAX,
        };
        assert_eq!(huge.cost_micros(usage(u32::MAX, u32::MAX)), i64::MAX);
    }

    #[test]
    fn estimator_counts_chars_and_overhead() {
        assert_eq!(estimate_text_tokens(""), 0);
        assert_eq!(estimate_text_tokens("abcd"), 1);
        assert_eq!(estimate_text_tokens("abcde"), 2);
        // Characters, not bytes.
        assert_eq!(estimate_text_tokens("éééé"), 1);
        let request = ChatRequest::new(vec![Message::system("12345678"), Message::user("abc")]);
        assert_eq!(estimate_input_tokens(&request), 2 + 4 + 1 + 4);
        let call = ToolCall {
            id: "c".into(),
            name: "lookup".into(),
            arguments: "{}".into(),
        };
        assert_eq!(estimate_output_tokens("hi", &[call]), 1 + 2 + 1);
    }
}
