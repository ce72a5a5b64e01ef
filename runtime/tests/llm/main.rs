//! The model gateway against the mock OpenAI-compatible upstream over real loopback HTTP, and
//! the offline provider's documented rules.

mod gateway;
mod offline;
mod streams;

use std::time::Duration;

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::{BundleSources, Resource, compile, parse_documents};
use agentry_runtime::llm::{
    BreakerPolicy, ChatRequest, LlmConfig, LlmGateway, Message, Prices, RetryPolicy,
    ToolDefinition, Usage, UsageRecord,
};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A bundle of tenant `t1` whose providers and models are the given YAML list items.
#[expect(
    clippy::panic,
    reason = "a fixture that does not compile fails the test"
)]
pub fn bundle(providers: &str, models: &str) -> RuntimeBundle {
    let yaml = format!(
        "apiVersion: agentry.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t1}}\nspec:\n  \
         providers:\n{providers}\n  models:\n{models}\n"
    );
    let (resources, errors) = parse_documents(&yaml);
    assert!(errors.is_empty(), "{errors:?}\n{yaml}");
    let Some(Resource::Tenant(tenant)) = resources.into_iter().next() else {
        panic!("no tenant in {yaml}");
    };
    let compilation = compile(&BundleSources::new(*tenant));
    assert!(
        compilation.diagnostics.is_empty(),
        "{:?}",
        compilation.diagnostics
    );
    compilation.bundle
}

/// Two OpenAI-compatible providers on `base_url` (`upstream-a` serving model `primary` as
/// `p-model`, `upstream-b` serving `backup` as `b-model`) and the builtin `local` (`offline`).
pub fn mock_bundle(base_url: &str) -> RuntimeBundle {
    bundle(
        &format!(
            "    - {{name: upstream-a, type: openai, baseUrl: \"{base_url}\", timeoutMs: 2000}}\n    \
             - {{name: upstream-b, type: openai, baseUrl: \"{base_url}\", timeoutMs: 2000}}\n    \
             - {{name: local, type: builtin}}"
        ),
        "    - {name: primary, provider: upstream-a, upstreamModel: p-model, \
         inputPricePerMTokUsd: \"1.00\", outputPricePerMTokUsd: \"2.00\"}\n    \
         - {name: backup, provider: upstream-b, upstreamModel: b-model, \
         inputPricePerMTokUsd: \"0.50\", outputPricePerMTokUsd: \"1.50\"}\n    \
         - {name: offline, provider: local, \
         inputPricePerMTokUsd: \"0.15\", outputPricePerMTokUsd: \"0.60\"}",
    )
}

/// Fast retries (1–5 ms backoff), 3 attempts, a breaker opening after 3 failures for 30 s.
pub fn fast_config() -> LlmConfig {
    LlmConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_retry_after: Duration::from_secs(2),
        },
        breaker: BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_secs(30),
        },
        key_recheck: Duration::ZERO,
        jitter_seed: Some(7),
        ..LlmConfig::default()
    }
}

/// An HTTP client (the ring crypto provider installed first, as the runtime does).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A gateway with `config` and a channel receiving every usage record.
pub fn gateway(config: LlmConfig) -> (LlmGateway, UnboundedReceiver<UsageRecord>) {
    let (tx, rx) = unbounded_channel();
    (LlmGateway::new(http(), config).with_usage_sink(tx), rx)
}

/// Model names.
pub fn models(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// The `lookup-order` tool of the example tenant.
pub fn lookup_order() -> ToolDefinition {
    ToolDefinition {
        name: "lookup-order".into(),
        description: "Look up an order by its id.".into(),
        parameters: json!({
            "type": "object",
            "required": ["orderId"],
            "properties": {"orderId": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,32}$"}},
            "additionalProperties": false
        }),
    }
}

/// The `transfer-to-agent` tool of the example tenant.
pub fn transfer() -> ToolDefinition {
    ToolDefinition {
        name: "transfer-to-agent".into(),
        description: "Transfer the conversation to another agent.".into(),
        parameters: json!({"type": "object", "required": ["agent"], "properties": {"agent": {"type": "string"}}}),
    }
}

/// The `current-time` tool of the example tenant.
pub fn current_time() -> ToolDefinition {
    ToolDefinition {
        name: "current-time".into(),
        description: "The current date and time in UTC.".into(),
        parameters: json!({"type": "object"}),
    }
}

/// A system prompt and one user message.
pub fn conversation(system: &str, user: &str) -> Vec<Message> {
    vec![Message::system(system), Message::user(user)]
}

/// Everything received so far.
pub fn drain(rx: &mut UnboundedReceiver<UsageRecord>) -> Vec<UsageRecord> {
    let mut out = Vec::new();
    while let Ok(record) = rx.try_recv() {
        out.push(record);
    }
    out
}

/// Prices in micro-dollars per million tokens.
pub fn prices(input: i64, output: i64) -> Prices {
    Prices {
        input_micros_per_mtok: input,
        output_micros_per_mtok: output,
    }
}

/// The mock's usage for a request: ⌈chars/4⌉ + 4 per message in, ⌈chars/4⌉ out.
pub fn mock_usage(request: &ChatRequest, output: &str) -> Usage {
    let tokens = |text: &str| u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX);
    Usage {
        input_tokens: request
            .messages
            .iter()
            .map(|m| tokens(&m.content) + 4)
            .sum(),
        output_tokens: tokens(output),
    }
}

/// The gateway lives in shared state and its futures run in axum handlers: all must be `Send`.
#[test]
fn gateway_and_its_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Send + Sync>() {}
    fn send_type<T: Send + 'static>() {}
    sync::<LlmGateway>();
    // A stream becomes an SSE body: Send and 'static.
    send_type::<agentry_runtime::llm::LlmStream>();
    let gateway = LlmGateway::new(http(), LlmConfig::default());
    let bundle = bundle(
        "    - {name: local, type: builtin}",
        "    - {name: m, provider: local}",
    );
    let request = ChatRequest::default();
    let names = models(&["m"]);
    send(&gateway.complete(&bundle, &names, &request));
    send(&gateway.stream(&bundle, &names, &request));
}
