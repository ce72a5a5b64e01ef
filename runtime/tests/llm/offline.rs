//! The offline provider: one test per documented rule, determinism, streaming, cost, and no
//! network.

use agentry_runtime::llm::cost::{estimate_input_tokens, estimate_output_tokens};
use agentry_runtime::llm::{
    ChatRequest, FinishReason, LlmConfig, LlmGateway, Message, OfflineProvider, Prices,
    ProviderReply, StreamEvent, ToolCall, ToolDefinition, Usage,
};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{bundle, conversation, current_time, fast_config, lookup_order, models, transfer};

fn ask(messages: Vec<Message>, tools: Vec<ToolDefinition>) -> ProviderReply {
    let mut request = ChatRequest::new(messages);
    request.tools = tools;
    OfflineProvider::new("local").reply(&request)
}

#[expect(
    clippy::unwrap_used,
    reason = "arguments that are not JSON fail the test"
)]
fn call_of(reply: ProviderReply) -> (String, Value) {
    assert_eq!(reply.finish_reason, FinishReason::ToolCalls, "{reply:?}");
    assert_eq!(reply.tool_calls.len(), 1);
    let call = &reply.tool_calls[0];
    (
        call.name.clone(),
        serde_json::from_str(&call.arguments).unwrap(),
    )
}

fn tools() -> Vec<ToolDefinition> {
    vec![lookup_order(), current_time(), transfer()]
}

#[test]
fn rule_1_summarises_tool_results() {
    let call = ToolCall {
        id: "call_1".into(),
        name: "lookup-order".into(),
        arguments: "{\"orderId\":\"A-1001\"}".into(),
    };
    let reply = ask(
        vec![
            Message::system("You are billing."),
            Message::user("lookup order A-1001"),
            Message::assistant("", vec![call]),
            Message::tool_result("call_1", " {\"status\":\"shipped\",\"total\":42.5} "),
        ],
        tools(),
    );
    assert_eq!(
        reply.content,
        "lookup-order returned: {\"status\":\"shipped\",\"total\":42.5}"
    );
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason, FinishReason::Stop);
}

#[test]
fn rule_2_json_mode_classifies_from_the_options() {
    let system =
        r#"Classify support tickets. Answer with JSON: {"category": "billing|general|urgent"}."#;
    let classify = |text: &str| {
        let mut request = ChatRequest::new(conversation(system, text));
        request.json_mode = true;
        let reply = OfflineProvider::new("local").reply(&request);
        serde_json::from_str::<Value>(&reply.content).unwrap()
    };
    assert_eq!(
        classify("Subject: Invoice\n\nMy billing address is wrong"),
        json!({"category": "billing"})
    );
    assert_eq!(
        classify("Site down! This is URGENT."),
        json!({"category": "urgent"})
    );
    // Nothing mentioned: the first option.
    assert_eq!(classify("Hello?"), json!({"category": "billing"}));
    // No options in the prompt: the text answer, as JSON.
    let mut request = ChatRequest::new(conversation("Answer in JSON.", "Where is my parcel?"));
    request.json_mode = true;
    let reply = OfflineProvider::new("local").reply(&request);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.content).unwrap(),
        json!({"answer": "I can help with that: Where is my parcel?"})
    );
}

#[test]
fn rule_3_explicit_tool_requests() {
    let reply = ask(
        conversation(
            "",
            "please /lookup-order {\"orderId\": \"B-7\", \"x\": \"}\"} now",
        ),
        tools(),
    );
    assert_eq!(
        reply.tool_calls[0].arguments,
        "{\"orderId\": \"B-7\", \"x\": \"}\"}"
    );
    let (name, args) = call_of(ask(
        conversation("", "Call lookup-order with {\"orderId\":\"C-9\"}"),
        tools(),
    ));
    assert_eq!(
        (name.as_str(), args),
        ("lookup-order", json!({"orderId": "C-9"}))
    );
    let (name, args) = call_of(ask(conversation("", "/current-time"), tools()));
    assert_eq!((name.as_str(), args), ("current-time", json!({})));
    // The earliest request wins.
    let (name, _) = call_of(ask(
        conversation("", "/current-time then /lookup-order {}"),
        tools(),
    ));
    assert_eq!(name, "current-time");
    // Invalid JSON is passed through for the caller to reject.
    let reply = ask(conversation("", "/lookup-order {not json"), tools());
    assert_eq!(reply.tool_calls[0].arguments, "{not json");
    // A tool that is not offered is never called.
    let reply = ask(conversation("", "/issue-refund {}"), tools());
    assert!(reply.tool_calls.is_empty());
}

#[test]
fn rule_4_mentioned_tools_with_arguments_from_the_schema() {
    let (name, args) = call_of(ask(
        conversation("", "Can you lookup order #A-1001 for me?"),
        tools(),
    ));
    assert_eq!(
        (name.as_str(), args),
        ("lookup-order", json!({"orderId": "A-1001"}))
    );
    // The schema's pattern filters the candidates.
    let mut strict = lookup_order();
    strict.parameters["properties"]["orderId"]["pattern"] = json!("^ORD-[0-9]+$");
    let (_, args) = call_of(ask(
        conversation("", "lookup-order for A-1 or ORD-77"),
        vec![strict],
    ));
    assert_eq!(args, json!({"orderId": "ORD-77"}));
    // Missing arguments: a question instead of a call.
    let reply = ask(conversation("", "please lookup order"), tools());
    assert!(reply.tool_calls.is_empty());
    assert_eq!(
        reply.content,
        "I can do that with lookup-order, but I need the orderId first."
    );
    // No required arguments.
    let (name, args) = call_of(ask(conversation("", "What is the current time?"), tools()));
    assert_eq!((name.as_str(), args), ("current-time", json!({})));
    // Free-text, integer and enum properties.
    let search = ToolDefinition {
        name: "search".into(),
        description: String::new(),
        parameters: json!({"type": "object", "required": ["query", "limit", "scope"], "properties": {
            "query": {"type": "string"}, "limit": {"type": "integer"},
            "scope": {"type": "string", "enum": ["faq", "docs"]}}}),
    };
    let (_, args) = call_of(ask(
        conversation("", "search the docs for 5 tips"),
        vec![search],
    ));
    assert_eq!(
        args,
        json!({"query": "search the docs for 5 tips", "limit": 5, "scope": "docs"})
    );
}

#[test]
fn rule_4_transfers_to_a_listed_agent() {
    let system = "You are the first contact.\nYou can transfer to: billing, general";
    let (name, args) = call_of(ask(
        conversation(system, "I have a Billing question about my invoice"),
        tools(),
    ));
    assert_eq!(
        (name.as_str(), args),
        ("transfer-to-agent", json!({"agent": "billing"}))
    );
    // An agent that is not listed is not a target.
    let reply = ask(
        conversation("You can transfer to: general", "billing please"),
        vec![transfer()],
    );
    assert!(reply.tool_calls.is_empty());
    // No handoff list: no transfer.
    let reply = ask(conversation("", "billing please"), vec![transfer()]);
    assert!(reply.tool_calls.is_empty());
}

#[test]
fn rule_5_quotes_the_most_relevant_knowledge() {
    let system = "You answer from the help centre.\nKnowledge:\n- Refunds take 5 business days.\n\
                  - Passwords can be reset from the login page.\n- Shipping is free over $50.";
    let reply = ask(conversation(system, "How do I reset my password?"), vec![]);
    assert_eq!(
        reply.content,
        "From the knowledge base: Passwords can be reset from the login page."
    );
    let reply = ask(conversation(system, "When do refunds arrive?"), vec![]);
    assert_eq!(
        reply.content,
        "From the knowledge base: Refunds take 5 business days."
    );
    // No overlap: rule 6.
    let reply = ask(conversation(system, "Hi there"), vec![]);
    assert_eq!(reply.content, "I can help with that: Hi there");
}

#[test]
fn rule_6_restates_the_question() {
    let reply = ask(
        conversation("Be nice.", "Where is my parcel?  It is late."),
        vec![],
    );
    assert_eq!(reply.content, "I can help with that: Where is my parcel?");
    let reply = ask(vec![Message::system("Be nice.")], vec![]);
    assert_eq!(reply.content, "Hello! How can I help you today?");
}

#[test]
fn max_tokens_truncates_text() {
    let mut request = ChatRequest::new(conversation("", "Where is my parcel? It is late."));
    request.max_tokens = Some(3);
    let reply = OfflineProvider::new("local").reply(&request);
    assert_eq!(reply.content, "I can help");
    assert_eq!(reply.finish_reason, FinishReason::Length);
}

#[test]
fn answers_are_deterministic_and_counted() {
    let messages = conversation("You can transfer to: billing", "lookup order A-1 please");
    let first = ask(messages.clone(), tools());
    let second = ask(messages.clone(), tools());
    assert_eq!(first, second);
    assert!(first.tool_calls[0].id.starts_with("call_"));
    assert_eq!(first.tool_calls[0].id.len(), "call_".len() + 16);
    // Another conversation, another id.
    let other = ask(conversation("", "lookup order A-2 please"), tools());
    assert_ne!(other.tool_calls[0].id, first.tool_calls[0].id);
    let mut request = ChatRequest::new(messages);
    request.tools = tools();
    assert_eq!(
        first.usage,
        Some(Usage {
            input_tokens: estimate_input_tokens(&request),
            output_tokens: estimate_output_tokens("", &first.tool_calls),
        })
    );
}

/// The offline provider through the gateway, with an HTTP client that cannot reach anything
/// (every request goes to a proxy on a closed port): it must not need it.
#[tokio::test]
async fn runs_through_the_gateway_without_network() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let unreachable = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all("http://127.0.0.1:9").unwrap())
        .build()
        .unwrap();
    let (tx, mut usage) = tokio::sync::mpsc::unbounded_channel();
    let gateway = LlmGateway::new(unreachable, fast_config()).with_usage_sink(tx);
    let bundle = bundle(
        "    - {name: local, type: builtin}",
        "    - {name: small, provider: local, inputPricePerMTokUsd: \"0.15\", outputPricePerMTokUsd: \"0.60\"}",
    );
    let request = ChatRequest::new(conversation(
        "Knowledge:\nOrders ship within two days.",
        "When do orders ship?",
    ));
    let completion = gateway
        .complete(&bundle, &models(&["small"]), &request)
        .await
        .unwrap();
    assert_eq!(
        completion.content,
        "From the knowledge base: Orders ship within two days."
    );
    assert!(!completion.usage_estimated);
    let prices = Prices {
        input_micros_per_mtok: 150_000,
        output_micros_per_mtok: 600_000,
    };
    assert_eq!(completion.cost_micros, prices.cost_micros(completion.usage));
    assert!(completion.cost_micros > 0);

    // Streamed word by word, the same answer and usage.
    let mut stream = gateway
        .stream(&bundle, &models(&["small"]), &request)
        .await
        .unwrap();
    let mut pieces = Vec::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Delta(piece) => pieces.push(piece),
            StreamEvent::Done(c) => done = Some(c),
            StreamEvent::ToolCall(call) => panic!("{call:?}"),
        }
    }
    assert_eq!(pieces.len(), completion.content.split_whitespace().count());
    assert_eq!(pieces.concat(), completion.content);
    let done = done.unwrap();
    assert_eq!(done.usage, completion.usage);
    assert_eq!(done.cost_micros, completion.cost_micros);

    // Tool calls stream too.
    let mut request = ChatRequest::new(conversation("", "lookup order A-1"));
    request.tools = tools();
    let done = gateway
        .stream(&bundle, &models(&["small"]), &request)
        .await
        .unwrap()
        .into_completion()
        .await
        .unwrap();
    assert_eq!(done.tool_calls[0].arguments, "{\"orderId\":\"A-1\"}");
    assert_eq!(
        usage.try_recv().unwrap().cost_micros,
        completion.cost_micros
    );
}

/// The example tenant (models `small` and `large` on the builtin provider) answers with no
/// API key.
#[tokio::test]
async fn the_example_tenant_runs_offline() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/acme.yaml"
    ))
    .unwrap();
    let (resources, errors) = agentry_crds::bundle::parse_documents(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let (sources, _) = agentry_crds::bundle::group_by_tenant(resources);
    let bundle = agentry_crds::bundle::compile(&sources[0]).bundle;
    let gateway = LlmGateway::new(super::http(), LlmConfig::default());
    let mut request = ChatRequest::new(conversation(
        "You can transfer to: billing, general",
        "I need billing help",
    ));
    request.tools = vec![transfer()];
    let completion = gateway
        .complete(&bundle, &models(&["small", "large"]), &request)
        .await
        .unwrap();
    assert_eq!(completion.provider, "local");
    assert_eq!(
        completion.tool_calls[0].arguments,
        "{\"agent\":\"billing\"}"
    );
}
