//! A provider speaking the OpenAI chat-completions wire format (OpenAI, Azure OpenAI through a
//! compatible gateway, vLLM, Ollama, LiteLLM, …): `POST {base_url}/chat/completions`, bearer
//! key, tools as `function`s, streaming over server-sent events with
//! `stream_options.include_usage` so that streamed calls report their usage too.

use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::{LlmError, sanitize};
use super::provider::{ChunkStream, Provider, ProviderReply};
use super::secrets::ApiKey;
use super::sse::{self, WireUsage};
use super::types::{ChatRequest, FinishReason, Message, Role, ToolCall, ToolDefinition};

/// An OpenAI-compatible HTTP provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    name: String,
    endpoint: Endpoint,
    key: ApiKey,
    http: reqwest::Client,
    timeout: Duration,
    max_stream: Duration,
}

impl OpenAiProvider {
    /// A provider named `name` calling `{base_url}/chat/completions`. `timeout` bounds a whole
    /// non-streamed call, the wait for a stream's first bytes, and every gap between chunks;
    /// `max_stream` bounds a whole stream.
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        key: ApiKey,
        http: reqwest::Client,
        timeout: Duration,
        max_stream: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            endpoint: Endpoint::new(format!(
                "{}/chat/completions",
                base_url.trim_end_matches('/')
            )),
            key,
            http,
            timeout,
            max_stream,
        }
    }

    fn key(&self) -> Result<Option<String>, LlmError> {
        self.key.current().map_err(|message| LlmError::Config {
            provider: self.name.clone(),
            message,
        })
    }

    fn post(
        &self,
        body: &WireRequest<'_>,
        key: Option<&str>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let builder = match &self.endpoint.parsed {
            Some(url) => self.http.post(url.clone()),
            // reqwest reports why the URL is unusable when the request is sent.
            None => self.http.post(&self.endpoint.raw),
        };
        let mut builder = builder.timeout(timeout).json(body);
        // W3C trace context, so that a tracing gateway in front of the provider joins the trace.
        for (name, value) in crate::telemetry::trace_headers() {
            builder = builder.header(name, value);
        }
        match key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Maps a transport error; the URL is stripped (it may carry credentials in userinfo).
    fn transport(&self, error: reqwest::Error) -> LlmError {
        if error.is_timeout() {
            return LlmError::Timeout {
                provider: self.name.clone(),
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            };
        }
        let decode = error.is_decode();
        let message = error_chain(&error.without_url());
        if decode {
            LlmError::BadResponse {
                provider: self.name.clone(),
                message,
            }
        } else {
            LlmError::Connect {
                provider: self.name.clone(),
                message,
            }
        }
    }

    /// Turns an error status into an [`LlmError`], reading the body for the message.
    async fn check(
        &self,
        response: reqwest::Response,
        key: Option<&str>,
    ) -> Result<reqwest::Response, LlmError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = tokio::time::timeout(self.timeout, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = sanitize(&body, key);
        Err(if status.as_u16() == 429 {
            LlmError::RateLimited {
                provider: self.name.clone(),
                retry_after,
                message,
            }
        } else {
            LlmError::Status {
                provider: self.name.clone(),
                status: status.as_u16(),
                message,
            }
        })
    }
}

/// The completions URL, parsed once: parsing it took about 2 % of the runtime's CPU per
/// request when reqwest did it on every call.
#[derive(Debug)]
struct Endpoint {
    raw: String,
    parsed: Option<reqwest::Url>,
}

impl Endpoint {
    fn new(raw: String) -> Self {
        let parsed = reqwest::Url::parse(&raw).ok();
        Self { raw, parsed }
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        upstream_model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, LlmError>> {
        Box::pin(async move {
            let key = self.key()?;
            let body = WireRequest::new(upstream_model, request, false);
            let response = self
                .post(&body, key.as_deref(), self.timeout)
                .send()
                .await
                .map_err(|e| self.transport(e))?;
            let response = self.check(response, key.as_deref()).await?;
            let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
            parse_response(&self.name, &bytes)
        })
    }

    fn stream<'a>(
        &'a self,
        upstream_model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, LlmError>> {
        Box::pin(async move {
            let key = self.key()?;
            let body = WireRequest::new(upstream_model, request, true);
            // The request timeout bounds the whole stream; the wait for the response head is
            // bounded by the provider timeout.
            let send = self.post(&body, key.as_deref(), self.max_stream).send();
            let response = tokio::time::timeout(self.timeout, send)
                .await
                .map_err(|_| LlmError::Timeout {
                    provider: self.name.clone(),
                    timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                })?
                .map_err(|e| self.transport(e))?;
            let response = self.check(response, key.as_deref()).await?;
            let name = self.name.clone();
            let timeout = self.timeout;
            let body = response
                .bytes_stream()
                .map(move |item| item.map_err(|e| error_chain(&e.without_url())))
                .boxed();
            Ok(sse::chunks(name, body, timeout))
        })
    }
}

/// The `Retry-After` of a response: `retry-after-ms` (OpenAI, Azure) first, then
/// `retry-after` in seconds. HTTP-date values are ignored (no provider sends them).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(86_400_000.0) / 1000.0));
    }
    number("retry-after").map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn parse_response(provider: &str, bytes: &[u8]) -> Result<ProviderReply, LlmError> {
    let bad = |message: String| LlmError::BadResponse {
        provider: provider.to_owned(),
        message,
    };
    let wire: WireResponse =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| bad("no choices".to_owned()))?;
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| ToolCall {
            id: call.id.unwrap_or_else(|| format!("call_{i}")),
            name: call.function.name,
            arguments: call.function.arguments.unwrap_or_default(),
        })
        .collect();
    let finish_reason = match choice.finish_reason.as_deref() {
        Some(reason) => FinishReason::from_wire(reason),
        None if tool_calls.is_empty() => FinishReason::Stop,
        None => FinishReason::ToolCalls,
    };
    Ok(ProviderReply {
        content: choice.message.content.unwrap_or_default(),
        tool_calls,
        usage: wire.usage.map(WireUsage::into_usage),
        finish_reason,
    })
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

impl<'a> WireRequest<'a> {
    fn new(model: &'a str, request: &'a ChatRequest, stream: bool) -> Self {
        Self {
            model,
            messages: request.messages.iter().map(WireMessage::from).collect(),
            tools: request.tools.iter().map(WireTool::from).collect(),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            response_format: request.json_mode.then_some(ResponseFormat {
                kind: "json_object",
            }),
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        }
    }
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    // null for an assistant message that only calls tools, as the API expects.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> From<&'a Message> for WireMessage<'a> {
    fn from(message: &'a Message) -> Self {
        let content = if message.role == Role::Assistant
            && message.content.is_empty()
            && !message.tool_calls.is_empty()
        {
            None
        } else {
            Some(message.content.as_str())
        };
        Self {
            role: message.role.as_str(),
            content,
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| WireToolCall {
                    id: &call.id,
                    kind: "function",
                    function: WireFunction {
                        name: &call.name,
                        arguments: &call.arguments,
                    },
                })
                .collect(),
            tool_call_id: message.tool_call_id.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolFunction<'a>,
}

#[derive(Serialize)]
struct WireToolFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

impl<'a> From<&'a ToolDefinition> for WireTool<'a> {
    fn from(tool: &'a ToolDefinition) -> Self {
        Self {
            kind: "function",
            function: WireToolFunction {
                name: &tool.name,
                description: &tool.description,
                parameters: &tool.parameters,
            },
        }
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireReplyMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireReplyMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireReplyToolCall>,
}

#[derive(Deserialize)]
struct WireReplyToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireReplyFunction,
}

#[derive(Deserialize)]
struct WireReplyFunction {
    name: String,
    #[serde(default)]
    arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::Usage;

    #[test]
    fn serializes_the_wire_request() {
        let mut request = ChatRequest::new(vec![
            Message::system("be brief"),
            Message::assistant(
                "",
                vec![ToolCall {
                    id: "c1".into(),
                    name: "lookup".into(),
                    arguments: "{}".into(),
                }],
            ),
            Message::tool_result("c1", "{\"ok\":true}"),
        ]);
        request.json_mode = true;
        request.max_tokens = Some(5);
        let json = serde_json::to_value(WireRequest::new("m", &request, true)).unwrap();
        assert_eq!(json["messages"][1]["content"], serde_json::Value::Null);
        assert_eq!(json["messages"][1]["tool_calls"][0]["type"], "function");
        assert_eq!(json["messages"][2]["tool_call_id"], "c1");
        assert_eq!(json["response_format"]["type"], "json_object");
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert_eq!(json["max_tokens"], 5);
        assert!(json.get("tools").is_none() && json.get("temperature").is_none());
    }

    #[test]
    fn parses_a_reply_with_tool_calls() {
        let body = br#"{"choices":[{"message":{"content":null,"tool_calls":[
            {"id":"call_9","type":"function","function":{"name":"lookup","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let reply = parse_response("p", body).unwrap();
        assert_eq!(reply.tool_calls[0].id, "call_9");
        assert_eq!(reply.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(reply.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            reply.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 3
            })
        );
        assert!(matches!(
            parse_response("p", b"{\"choices\":[]}"),
            Err(LlmError::BadResponse { .. })
        ));
    }

    #[test]
    fn reads_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        headers.clear();
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    #[test]
    fn the_endpoint_is_parsed_once() {
        let provider = |base: &str| {
            OpenAiProvider::new(
                "p",
                base,
                ApiKey::None,
                client(),
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
        };
        let good = provider("http://127.0.0.1:9/v1/");
        assert_eq!(
            good.endpoint.parsed.as_ref().map(reqwest::Url::as_str),
            Some("http://127.0.0.1:9/v1/chat/completions")
        );
        let bad = provider("127.0.0.1:9 /v1");
        assert!(bad.endpoint.parsed.is_none());
        assert_eq!(bad.endpoint.raw, "127.0.0.1:9 /v1/chat/completions");
    }

    #[tokio::test]
    async fn a_base_url_that_does_not_parse_is_an_error_not_a_panic() {
        let provider = OpenAiProvider::new(
            "broken",
            "no scheme here",
            ApiKey::None,
            client(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let request = ChatRequest::new(vec![Message::user("hi")]);
        let error = provider.complete("m", &request).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::Connect { provider, .. } if provider == "broken"),
            "{error:?}"
        );
    }
}
