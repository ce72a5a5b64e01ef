//! Streams: usage on every path (completed, cancelled, broken midway, unreported).

use std::time::Duration;

use agentry_e2e::mock_llm::{DEFAULT_REPLY, MockConfig, MockLlm};
use agentry_runtime::llm::cost::{estimate_input_tokens, estimate_output_tokens};
use agentry_runtime::llm::{ChatRequest, CircuitState, Message, StreamEvent, Usage, UsageOutcome};
use futures::StreamExt as _;

use super::{drain, fast_config, gateway, mock_bundle, mock_usage, models, prices};

#[tokio::test]
async fn stream_reports_usage_and_cost() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, mut usage) = gateway(fast_config());
    let request = ChatRequest::new(vec![Message::user("Stream me something")]);
    let mut stream = gateway
        .stream(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    let mut text = String::new();
    let mut deltas = 0;
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Delta(piece) => {
                deltas += 1;
                text.push_str(&piece);
            }
            StreamEvent::Done(completion) => done = Some(completion),
            StreamEvent::ToolCall(call) => panic!("unexpected {call:?}"),
        }
    }
    drop(stream);
    let done = done.unwrap();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(deltas, DEFAULT_REPLY.split_whitespace().count());
    assert_eq!(done.content, DEFAULT_REPLY);
    // The usage chunk was asked for and read, not estimated.
    assert_eq!(
        mock.last_request().unwrap()["stream_options"]["include_usage"],
        true
    );
    assert!(!done.usage_estimated);
    assert_eq!(done.usage, mock_usage(&request, DEFAULT_REPLY));
    assert_eq!(
        done.cost_micros,
        prices(1_000_000, 2_000_000).cost_micros(done.usage)
    );
    let records = drain(&mut usage);
    assert_eq!(records.len(), 1, "exactly one record per stream");
    assert_eq!(records[0].outcome, UsageOutcome::Completed);
    assert!(records[0].streamed);
    assert_eq!(records[0].usage, done.usage);
}

#[tokio::test]
async fn a_cancelled_stream_still_reports_usage() {
    let mock = MockLlm::start(MockConfig {
        token_latency: Duration::from_millis(15),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, mut usage) = gateway(fast_config());
    let long = "word ".repeat(200);
    let request = ChatRequest::new(vec![Message::user(format!("#reply {long}"))]);
    let (tx, mut own) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = gateway
        .stream(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap()
        .with_usage_sink(tx);
    // The first content chunk, then the consumer goes away.
    let mut received = String::new();
    while received.is_empty() {
        if let StreamEvent::Delta(text) = stream.next().await.unwrap().unwrap() {
            received.push_str(&text);
        }
    }
    drop(stream);
    let records = drain(&mut usage);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.outcome, UsageOutcome::Cancelled);
    assert!(record.estimated);
    assert_eq!(record.usage.input_tokens, estimate_input_tokens(&request));
    assert!(record.usage.output_tokens >= 1 && record.usage.output_tokens < 50);
    assert_eq!(
        record.cost_micros,
        prices(1_000_000, 2_000_000).cost_micros(record.usage)
    );
    assert!(record.cost_micros > 0);
    // The per-stream sink got the same record.
    assert_eq!(own.try_recv().unwrap(), *record);
}

#[tokio::test]
async fn an_upstream_without_usage_is_estimated() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, mut usage) = gateway(fast_config());
    let request = ChatRequest::new(vec![Message::user("#nousage\n#reply one two three")]);
    let estimate = Usage {
        input_tokens: estimate_input_tokens(&request),
        output_tokens: estimate_output_tokens("one two three", &[]),
    };
    let completion = gateway
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    assert!(completion.usage_estimated);
    assert_eq!(completion.usage, estimate);
    assert!(completion.cost_micros > 0);
    let done = gateway
        .stream(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap()
        .into_completion()
        .await
        .unwrap();
    assert!(done.usage_estimated);
    assert_eq!(done.usage, estimate);
    let records = drain(&mut usage);
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.estimated && r.cost_micros == completion.cost_micros)
    );
}

#[tokio::test]
async fn a_stream_broken_midway_is_metered_and_counts_against_the_breaker() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = super::bundle(
        &format!(
            "    - {{name: upstream, type: openai, baseUrl: \"{}\", timeoutMs: 150}}",
            mock.base_url()
        ),
        "    - {name: m, provider: upstream, inputPricePerMTokUsd: \"1\", outputPricePerMTokUsd: \"1\"}",
    );
    let (gateway, mut usage) = gateway(fast_config());
    // A connection cut after the first word, then an upstream that stalls for longer than
    // the provider timeout after it: both fail mid-stream, after the consumer got a word.
    for (directive, code) in [
        ("#cut", "upstream_unreachable"),
        ("#pause 1000", "upstream_timeout"),
        ("#cut", "upstream_unreachable"),
    ] {
        let request = ChatRequest::new(vec![Message::user(format!(
            "#reply Hello wide world\n{directive}"
        ))]);
        let mut stream = gateway
            .stream(&bundle, &models(&["m"]), &request)
            .await
            .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, StreamEvent::Delta("Hello ".into()));
        let error = stream.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), code, "{directive}: {error:?}");
        assert!(stream.next().await.is_none());
        drop(stream);
        let records = drain(&mut usage);
        assert_eq!(records.len(), 1, "{directive}");
        assert_eq!(records[0].outcome, UsageOutcome::Failed);
        assert!(records[0].estimated);
        assert_eq!(records[0].usage.output_tokens, 2);
        assert_eq!(
            records[0].usage.input_tokens,
            estimate_input_tokens(&request)
        );
    }
    // Three provider failures in a row: the threshold.
    assert_eq!(
        gateway.circuit_state("t1", "upstream"),
        Some(CircuitState::Open)
    );
}
