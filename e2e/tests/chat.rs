//! Chat through the real binary in dev mode: a conversation answered in JSON and over SSE by
//! the offline provider, and invisible to another tenant.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use agentry_e2e::{DevRuntime, copy_examples, is_event_stream, sse_events};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_answers_in_json_and_over_sse() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let manifests = copy_examples().unwrap();
    // Usage written and events relayed among the requests, not from the background thread
    // (the default, which e2e/tests/chat_failures.rs runs with).
    let rt =
        DevRuntime::start_with_env(manifests.path(), &[("AGENTRY_BACKGROUND_THREAD", "false")])
            .await
            .unwrap();
    let client = reqwest::Client::new();
    let key = rt.key("acme").to_owned();

    let created: Value = client
        .post(format!("{}/api/v1/chat/conversations", rt.base_url))
        .bearer_auth(&key)
        .json(&json!({"agent": "general", "title": "e2e"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["agent"], "general");
    let url = format!("{}/api/v1/chat/conversations/{id}/messages", rt.base_url);

    let r = client
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"content": "Do you sell blue widgets?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let text = answer["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty(), "{answer}");
    assert_eq!(answer["agent"], "general");

    let r = client
        .post(&url)
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .json(&json!({"content": "Tell me about your return policy."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(is_event_stream(&r), "{:?}", r.headers());
    let body = r.text().await.unwrap();
    let events = sse_events(&body).unwrap();
    let tokens: String = events
        .iter()
        .filter(|(n, _)| *n == "token")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert!(!tokens.is_empty(), "{body}");
    let (last, done) = events.last().unwrap();
    assert_eq!(*last, "done", "{body}");
    assert_eq!(done["message"]["content"].as_str().unwrap(), tokens);
    assert!(done["usage"]["inputTokens"].as_u64().unwrap() > 0);

    let detail: Value = client
        .get(format!("{}/api/v1/chat/conversations/{id}", rt.base_url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["messages"].as_array().unwrap().len(), 4);

    // The OpenAI-compatible surface, streamed.
    let body = client
        .post(format!("{}/v1/chat/completions", rt.base_url))
        .bearer_auth(&key)
        .json(&json!({"model": "small", "stream": true,
                      "messages": [{"role": "user", "content": "Hello there."}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let text: String = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "I can help with that: Hello there.");

    // Another tenant's key: the conversation does not exist for it.
    let globex = rt.key("globex").to_owned();
    assert!(!globex.is_empty() && globex != key);
    let conversation_url = format!("{}/api/v1/chat/conversations/{id}", rt.base_url);
    let r = client
        .get(&conversation_url)
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found", "{error}");
    let r = client
        .post(&url)
        .bearer_auth(&globex)
        .json(&json!({"content": "Let me in."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let message_id = detail["messages"][1]["id"].as_str().unwrap();
    let r = client
        .post(format!("{url}/{message_id}/feedback"))
        .bearer_auth(&globex)
        .json(&json!({"rating": "down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let listed: Value = client
        .get(format!("{}/api/v1/chat/conversations", rt.base_url))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != id.as_str()),
        "{listed}"
    );
    // The owner still sees it, unchanged by the attempts.
    let r = client
        .get(&conversation_url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["messages"].as_array().unwrap().len(), 4);
    rt.cleanup().await.unwrap();
}
