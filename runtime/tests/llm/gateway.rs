//! The gateway and the OpenAI-compatible provider against the mock upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_e2e::mock_llm::{DEFAULT_REPLY, MockConfig, MockLlm};
use agentry_runtime::llm::{
    ChatRequest, CircuitState, FinishReason, LlmConfig, LlmError, LlmGateway, ManualClock, Message,
    StreamEvent, UsageOutcome,
};
use agentry_runtime::metrics::Metrics;
use futures::StreamExt as _;

use super::{
    drain, fast_config, gateway, http, lookup_order, mock_bundle, mock_usage, models, prices,
};

#[tokio::test]
async fn completion_reports_usage_and_cost() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, mut usage) = gateway(fast_config());
    let request = ChatRequest::new(vec![
        Message::system("You are terse."),
        Message::user("Hello there"),
    ]);
    let completion = gateway
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    assert_eq!(completion.content, DEFAULT_REPLY);
    assert_eq!(completion.model, "primary");
    assert_eq!(completion.provider, "upstream-a");
    assert_eq!(completion.attempts, 1);
    assert_eq!(completion.finish_reason, FinishReason::Stop);
    assert!(!completion.usage_estimated);
    let expected = mock_usage(&request, DEFAULT_REPLY);
    assert_eq!(completion.usage, expected);
    // $1 / $2 per million tokens.
    assert_eq!(
        completion.cost_micros,
        prices(1_000_000, 2_000_000).cost_micros(expected)
    );
    assert!(completion.cost_micros > 0);
    // The wire request: upstream model id, no stream.
    let sent = mock.last_request().unwrap();
    assert_eq!(sent["model"], "p-model");
    assert_eq!(sent["messages"][1]["content"], "Hello there");
    assert!(sent.get("stream").is_none());
    assert_eq!(mock.requests("p-model"), 1);
    let records = drain(&mut usage);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, UsageOutcome::Completed);
    assert_eq!(records[0].cost_micros, completion.cost_micros);
    assert!(!records[0].streamed);
}

#[tokio::test]
async fn tool_calls_are_parsed_streamed_or_not() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, _usage) = gateway(fast_config());
    let mut request = ChatRequest::new(vec![Message::user(
        "look it up\n#tool lookup-order {\"orderId\":\"A-1\"}\n#tool current-time {}",
    )]);
    request.tools = vec![lookup_order()];
    let completion = gateway
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    assert_eq!(completion.finish_reason, FinishReason::ToolCalls);
    assert_eq!(completion.content, "");
    assert_eq!(completion.tool_calls.len(), 2);
    assert_eq!(completion.tool_calls[0].name, "lookup-order");
    assert_eq!(completion.tool_calls[0].arguments, "{\"orderId\":\"A-1\"}");
    assert_eq!(completion.tool_calls[0].id, "call_mock_0");
    assert_eq!(completion.tool_calls[1].name, "current-time");
    // The tools went out as functions.
    let sent = mock.last_request().unwrap();
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["function"]["name"], "lookup-order");

    let mut stream = gateway
        .stream(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    let mut calls = Vec::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::ToolCall(call) => calls.push(call),
            StreamEvent::Done(completion) => done = Some(completion),
            StreamEvent::Delta(text) => panic!("unexpected text {text:?}"),
        }
    }
    // Fragments (the mock splits arguments in two) are assembled by index.
    assert_eq!(calls, completion.tool_calls);
    let done = done.unwrap();
    assert_eq!(done.tool_calls, completion.tool_calls);
    assert_eq!(done.finish_reason, FinishReason::ToolCalls);

    // The tool result goes back with its call id; the mock answers from it.
    let mut follow_up = request.clone();
    follow_up
        .messages
        .push(Message::assistant("", completion.tool_calls.clone()));
    follow_up.messages.push(Message::tool_result(
        "call_mock_0",
        "{\"status\":\"shipped\"}",
    ));
    let answer = gateway
        .complete(&bundle, &models(&["primary"]), &follow_up)
        .await
        .unwrap();
    assert_eq!(answer.content, "Tool result: {\"status\":\"shipped\"}");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent["messages"][1]["content"], serde_json::Value::Null);
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_mock_0");
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_mock_0");
}

#[tokio::test]
async fn a_500_is_retried_until_success() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, _usage) = gateway(fast_config());
    mock.fail_next(2, 500);
    let request = ChatRequest::new(vec![Message::user("hi")]);
    let completion = gateway
        .complete(&bundle, &models(&["primary", "backup"]), &request)
        .await
        .unwrap();
    assert_eq!(completion.model, "primary");
    assert_eq!(completion.attempts, 3);
    assert_eq!(mock.requests("p-model"), 3);
    assert_eq!(mock.requests("b-model"), 0);

    // The same for a stream: the failure comes before the first chunk.
    mock.fail_next(1, 503);
    let stream = gateway
        .stream(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    let done = stream.into_completion().await.unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(done.content, DEFAULT_REPLY);
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, _usage) = gateway(fast_config());
    mock.fail_next_with_retry_after(1, 429, Duration::from_millis(400));
    let request = ChatRequest::new(vec![Message::user("hi")]);
    let started = Instant::now();
    let completion = gateway
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    // The backoff alone is at most 5 ms: the wait came from Retry-After.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(completion.attempts, 2);
    assert_eq!(mock.requests("p-model"), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_cap_falls_back_at_once() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, _usage) = gateway(fast_config());
    mock.fail_next_with_retry_after(1, 429, Duration::from_secs(30));
    let started = Instant::now();
    let completion = gateway
        .complete(
            &bundle,
            &models(&["primary", "backup"]),
            &ChatRequest::new(vec![Message::user("hi")]),
        )
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(completion.model, "backup");
    assert_eq!(mock.requests("p-model"), 1);
}

#[tokio::test]
async fn falls_back_to_the_next_model_after_retries() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, mut usage) = gateway(fast_config());
    mock.fail_model("p-model", Some(500));
    let request = ChatRequest::new(vec![Message::user("hi")]);
    let completion = gateway
        .complete(
            &bundle,
            &models(&["unknown", "primary", "backup"]),
            &request,
        )
        .await
        .unwrap();
    assert_eq!(completion.model, "backup");
    assert_eq!(completion.provider, "upstream-b");
    assert_eq!(completion.attempts, 4);
    assert_eq!(mock.requests("p-model"), 3);
    assert_eq!(mock.requests("b-model"), 1);
    // Priced with the model that answered.
    assert_eq!(
        completion.cost_micros,
        prices(500_000, 1_500_000).cost_micros(completion.usage)
    );
    assert_eq!(drain(&mut usage)[0].model, "backup");

    // Every model failing: the last error, with the number of attempts. The primary's
    // breaker opened after its 3 failures (the threshold), so only the backup was called.
    mock.fail_model("b-model", Some(502));
    let error = gateway
        .complete(&bundle, &models(&["primary", "backup"]), &request)
        .await
        .unwrap_err();
    let LlmError::Exhausted { attempts, last } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*attempts, 3);
    assert_eq!(mock.requests("p-model"), 3);
    assert_eq!(mock.requests("b-model"), 4);
    assert!(
        matches!(**last, LlmError::Status { status: 502, .. }),
        "{last:?}"
    );
    assert_eq!(error.code(), "upstream_error");
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let (gateway, mut usage) = gateway(fast_config());
    let request = ChatRequest::new(vec![Message::user("bad\n#fail 400")]);
    let error = gateway
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(error.root(), LlmError::Status { status: 400, message, .. } if message == "scripted failure"),
        "{error:?}"
    );
    assert_eq!(error.code(), "upstream_rejected");
    assert_eq!(mock.requests("p-model"), 1);
    assert!(drain(&mut usage).is_empty(), "a refused call costs nothing");
}

#[tokio::test]
async fn a_timeout_is_retried_then_falls_back() {
    let slow = MockLlm::start(MockConfig {
        latency: Duration::from_secs(5),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let fast = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = super::bundle(
        &format!(
            "    - {{name: slow, type: openai, baseUrl: \"{}\", timeoutMs: 150}}\n    \
             - {{name: fast, type: openai, baseUrl: \"{}\"}}",
            slow.base_url(),
            fast.base_url()
        ),
        "    - {name: a, provider: slow, inputPricePerMTokUsd: \"1\", outputPricePerMTokUsd: \"1\"}\n    \
         - {name: b, provider: fast, inputPricePerMTokUsd: \"1\", outputPricePerMTokUsd: \"1\"}",
    );
    let (gateway, _usage) = gateway(LlmConfig {
        retry: agentry_runtime::llm::RetryPolicy {
            max_attempts: 2,
            ..fast_config().retry
        },
        breaker: agentry_runtime::llm::BreakerPolicy {
            failure_threshold: 100,
            ..fast_config().breaker
        },
        ..fast_config()
    });
    let started = Instant::now();
    let request = ChatRequest::new(vec![Message::user("hi")]);
    let completion = gateway
        .complete(&bundle, &models(&["a", "b"]), &request)
        .await
        .unwrap();
    assert_eq!(completion.model, "b");
    assert_eq!(slow.requests("a"), 2);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Streams time out waiting for the response head too.
    let stream = gateway
        .stream(&bundle, &models(&["a", "b"]), &request)
        .await
        .unwrap();
    assert_eq!(stream.model(), "b");
    let error = gateway
        .complete(&bundle, &models(&["a"]), &request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "upstream_timeout");
}

#[tokio::test]
async fn the_breaker_opens_skips_half_opens_and_closes() {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let clock = Arc::new(ManualClock::new());
    let metrics = Arc::new(Metrics::new());
    let config = LlmConfig {
        retry: agentry_runtime::llm::RetryPolicy {
            max_attempts: 1,
            ..fast_config().retry
        },
        ..fast_config()
    };
    let gateway = LlmGateway::new(http(), config)
        .with_clock(clock.clone())
        .with_metrics(metrics.clone());
    let request = ChatRequest::new(vec![Message::user("hi")]);
    let both = models(&["primary", "backup"]);
    mock.fail_model("p-model", Some(500));
    for _ in 0..3 {
        let completion = gateway.complete(&bundle, &both, &request).await.unwrap();
        assert_eq!(completion.model, "backup");
    }
    assert_eq!(mock.requests("p-model"), 3);
    assert_eq!(
        gateway.circuit_state("t1", "upstream-a"),
        Some(CircuitState::Open)
    );
    assert_eq!(
        gateway.circuit_state("t1", "upstream-b"),
        Some(CircuitState::Closed)
    );
    let exported = metrics.encode();
    assert!(
        exported.contains(r#"agentry_provider_circuit_state{tenant="t1",provider="upstream-a"} 1"#),
        "{exported}"
    );

    // Open: straight to the fallback, the failing upstream is not called.
    let completion = gateway.complete(&bundle, &both, &request).await.unwrap();
    assert_eq!(completion.model, "backup");
    assert_eq!(completion.attempts, 1);
    assert_eq!(mock.requests("p-model"), 3);
    let stream = gateway.stream(&bundle, &both, &request).await.unwrap();
    assert_eq!(stream.model(), "backup");
    drop(stream);
    assert_eq!(mock.requests("p-model"), 3);
    let error = gateway
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "upstream_circuit_open");

    // After the pause one trial goes through; it fails: open again.
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        gateway.circuit_state("t1", "upstream-a"),
        Some(CircuitState::HalfOpen)
    );
    assert!(metrics.encode().contains(r#"provider="upstream-a"} 2"#));
    gateway.complete(&bundle, &both, &request).await.unwrap();
    assert_eq!(mock.requests("p-model"), 4);
    assert_eq!(
        gateway.circuit_state("t1", "upstream-a"),
        Some(CircuitState::Open)
    );

    // The upstream recovers; the next trial succeeds and closes the circuit.
    mock.fail_model("p-model", None);
    clock.advance(Duration::from_secs(30));
    let completion = gateway.complete(&bundle, &both, &request).await.unwrap();
    assert_eq!(completion.model, "primary");
    assert_eq!(mock.requests("p-model"), 5);
    assert_eq!(
        gateway.circuit_state("t1", "upstream-a"),
        Some(CircuitState::Closed)
    );
    assert!(metrics.encode().contains(r#"provider="upstream-a"} 0"#));
}

#[tokio::test]
async fn keys_come_from_the_mounted_secret_and_rotate() {
    let mock = MockLlm::start(MockConfig {
        api_key: Some("sk-first".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir(secrets.path().join("llm-keys")).unwrap();
    let key_file = secrets.path().join("llm-keys").join("apiKey");
    std::fs::write(&key_file, "sk-first\n").unwrap();
    let bundle = super::bundle(
        &format!(
            "    - {{name: openai, type: openai, baseUrl: \"{}\", apiKeySecretRef: {{name: llm-keys, key: apiKey}}}}",
            mock.base_url()
        ),
        "    - {name: m, provider: openai, inputPricePerMTokUsd: \"1\", outputPricePerMTokUsd: \"1\"}",
    );
    let config = LlmConfig {
        secrets_dir: secrets.path().to_path_buf(),
        ..fast_config()
    };
    let (gateway, _usage) = gateway(config);
    let request = ChatRequest::new(vec![Message::user("hi")]);
    gateway
        .complete(&bundle, &models(&["m"]), &request)
        .await
        .unwrap();

    // Rotation: new Secret content, no restart.
    mock.set_api_key(Some("sk-second-key"));
    std::fs::write(&key_file, "sk-second-key\n").unwrap();
    gateway
        .complete(&bundle, &models(&["m"]), &request)
        .await
        .unwrap();

    // A wrong key is a permanent error whose message does not contain the key.
    std::fs::write(&key_file, "sk-wrong-value-42\n").unwrap();
    let error = gateway
        .complete(&bundle, &models(&["m"]), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(error.root(), LlmError::Status { status: 401, .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("sk-wrong-value-42"));

    // A missing file: the provider is misconfigured; nothing is sent.
    std::fs::remove_file(&key_file).unwrap();
    let before = mock.total_requests();
    let error = gateway
        .complete(&bundle, &models(&["m"]), &request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "provider_misconfigured");
    assert_eq!(mock.total_requests(), before);
}

#[tokio::test]
async fn dev_mode_reads_keys_from_the_environment() {
    let mock = MockLlm::start(MockConfig {
        api_key: Some("sk-dev".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let bundle = mock_bundle(&mock.base_url());
    let env = |dev_mode: bool| {
        LlmGateway::new(
            http(),
            LlmConfig {
                dev_mode,
                ..fast_config()
            },
        )
        .with_env(Arc::new(|name: &str| {
            (name == "AGENTRY_PROVIDER_UPSTREAM_A_API_KEY").then(|| "sk-dev".to_owned())
        }))
    };
    let request = ChatRequest::new(vec![Message::user("hi")]);
    env(true)
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap();
    // Outside dev mode the environment is not consulted.
    let error = env(false)
        .complete(&bundle, &models(&["primary"]), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(error.root(), LlmError::Status { status: 401, .. }),
        "{error:?}"
    );
}
