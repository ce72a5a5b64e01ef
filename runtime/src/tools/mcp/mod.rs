//! The MCP adapter: JSON-RPC 2.0 over the streamable HTTP transport.
//!
//! Per server (tenant, URL and header set) the runtime keeps one session: `initialize`, then
//! the `notifications/initialized` notification, then `tools/list` (all pages), cached; the
//! `Mcp-Session-Id` the server assigned goes on every later request. A call is a
//! `tools/call` POST whose answer is either a JSON body or an SSE stream carrying the
//! response (possibly after notifications). A 404 on a request with a session id means the
//! server forgot the session: the runtime starts a new one and repeats the request once.

mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentry_crds::tool::McpTool;
use dashmap::DashMap;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use wire::{content_text, find_response, read_sse};

use super::error::{scrub, scrub_json, truncate};
use super::http::{
    ResolvedHeaders, read_capped, resolve_headers, retry_after, status_error, transient,
    transport_error,
};
use super::resilience::{self, AttemptError, CircuitBreaker, Jitter, Retry, RetryPlan};
use super::ssrf::{self, EgressAllowlist};
use super::{ToolContext, ToolError, ToolOutput, ToolSettings};

/// Protocol revision the client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Sessions kept at most; past this the cache is cleared (sessions are re-created lazily).
const MAX_SESSIONS: usize = 1024;
/// `tools/list` pages followed at most.
const MAX_LIST_PAGES: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SessionKey {
    tenant: String,
    url: String,
    headers: String,
}

/// An initialized session and the tools its server offers.
#[derive(Debug)]
struct Session {
    id: Option<String>,
    protocol: String,
    tools: HashSet<String>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Session>>>>;

/// MCP sessions of every tenant.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    slots: DashMap<SessionKey, Slot>,
    next_id: AtomicU64,
}

impl Sessions {
    fn slot(&self, key: SessionKey) -> Slot {
        if self.slots.len() >= MAX_SESSIONS && !self.slots.contains_key(&key) {
            self.slots.clear();
        }
        self.slots.entry(key).or_default().clone()
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One call of an MCP tool.
pub(super) struct McpCall<'a> {
    pub ctx: &'a ToolContext,
    pub spec: &'a McpTool,
    pub client: &'a reqwest::Client,
    pub allow: &'a Arc<EgressAllowlist>,
    pub settings: &'a ToolSettings,
    pub sessions: &'a Sessions,
}

/// Why an RPC did not produce a result.
enum Failure {
    /// The server no longer knows the session (HTTP 404).
    Expired,
    Attempt(AttemptError),
}

impl From<AttemptError> for Failure {
    fn from(e: AttemptError) -> Self {
        Self::Attempt(e)
    }
}

impl McpCall<'_> {
    pub(super) async fn run(
        &self,
        args: Value,
        plan: RetryPlan,
        breaker: &Arc<CircuitBreaker>,
        jitter: &dyn Jitter,
    ) -> Result<ToolOutput, ToolError> {
        let url = Url::parse(&self.spec.url)
            .map_err(|e| ToolError::misconfigured(format!("spec.mcp.url: {e}")))?;
        ssrf::check_url(&url, self.allow)?;
        let headers = resolve_headers(&self.spec.headers, self.ctx.secrets.as_ref())?;
        let slot = self.sessions.slot(SessionKey {
            tenant: self.ctx.tenant.clone(),
            url: url.to_string(),
            headers: fingerprint(&headers.map),
        });
        let params = json!({"name": self.spec.tool, "arguments": args});
        let result = resilience::run(plan, breaker, jitter, || {
            self.attempt(&url, &headers, &slot, &params)
        })
        .await?;
        self.map_result(result, &headers.secret_values)
    }

    async fn attempt(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        slot: &Slot,
        params: &Value,
    ) -> Result<Value, AttemptError> {
        let session = self.session(url, headers, slot, false).await?;
        match self
            .rpc(
                url,
                headers,
                Some(&session),
                "tools/call",
                params.clone(),
                false,
            )
            .await
        {
            Ok(v) => Ok(v),
            Err(Failure::Attempt(e)) => Err(e),
            Err(Failure::Expired) => {
                let session = self.session(url, headers, slot, true).await?;
                match self
                    .rpc(
                        url,
                        headers,
                        Some(&session),
                        "tools/call",
                        params.clone(),
                        false,
                    )
                    .await
                {
                    Ok(v) => Ok(v),
                    Err(Failure::Attempt(e)) => Err(e),
                    Err(Failure::Expired) => Err(transient(
                        "the MCP server dropped a new session at once".to_owned(),
                    )),
                }
            }
        }
    }

    /// The cached session, or a new one. `renew` discards the cached one (it expired). A
    /// cached session whose tool list lacks the tool is listed again once, in case the server
    /// gained the tool since.
    async fn session(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        slot: &Slot,
        renew: bool,
    ) -> Result<Arc<Session>, AttemptError> {
        let mut guard = slot.lock().await;
        if renew {
            *guard = None;
        }
        if let Some(s) = guard.as_ref() {
            if s.tools.contains(&self.spec.tool) {
                return Ok(s.clone());
            }
            match self.list(url, headers, s).await {
                Ok(tools) => {
                    let s = Arc::new(Session {
                        id: s.id.clone(),
                        protocol: s.protocol.clone(),
                        tools,
                    });
                    *guard = Some(s.clone());
                    return self.has_tool(s);
                }
                Err(Failure::Expired) => *guard = None,
                Err(Failure::Attempt(e)) => return Err(e),
            }
        }
        let s = Arc::new(self.initialize(url, headers).await?);
        *guard = Some(s.clone());
        self.has_tool(s)
    }

    fn has_tool(&self, s: Arc<Session>) -> Result<Arc<Session>, AttemptError> {
        if s.tools.contains(&self.spec.tool) {
            Ok(s)
        } else {
            Err(AttemptError::permanent(ToolError::misconfigured(format!(
                "the MCP server offers no tool named {:?}",
                self.spec.tool
            ))))
        }
    }

    async fn initialize(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
    ) -> Result<Session, AttemptError> {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "agentry-runtime", "version": env!("CARGO_PKG_VERSION")},
        });
        let (result, session_id) = self
            .exchange(url, headers, None, "initialize", params, true)
            .await
            .map_err(expired_as_transient)?;
        let mut session = Session {
            id: session_id,
            protocol: result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(PROTOCOL_VERSION)
                .to_owned(),
            tools: HashSet::new(),
        };
        self.notify(url, headers, &session, "notifications/initialized")
            .await
            .map_err(expired_as_transient)?;
        session.tools = self
            .list(url, headers, &session)
            .await
            .map_err(expired_as_transient)?;
        Ok(session)
    }

    async fn list(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        session: &Session,
    ) -> Result<HashSet<String>, Failure> {
        let mut tools = HashSet::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = self
                .rpc(url, headers, Some(session), "tools/list", params, true)
                .await?;
            for t in page
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = t.get("name").and_then(Value::as_str) {
                    tools.insert(name.to_owned());
                }
            }
            cursor = page
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }

    async fn rpc(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        session: Option<&Session>,
        method: &str,
        params: Value,
        safe: bool,
    ) -> Result<Value, Failure> {
        self.exchange(url, headers, session, method, params, safe)
            .await
            .map(|(result, _)| result)
    }

    /// One request and its response. `safe` marks methods without effects (their failures
    /// may always be repeated).
    async fn exchange(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        session: Option<&Session>,
        method: &str,
        params: Value,
        safe: bool,
    ) -> Result<(Value, Option<String>), Failure> {
        let id = self.sessions.id();
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self.post(url, headers, session, &body).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND && session.is_some_and(|s| s.id.is_some()) {
            return Err(Failure::Expired);
        }
        let session_id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut message = self.response(response, id, &headers.secret_values).await;
        if safe
            && let Err(e) = &mut message
            && e.retry == Retry::IfIdempotent
        {
            e.retry = Retry::Always;
        }
        let message = message?;
        if let Some(err) = message.get("error") {
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
            let text = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let (text, _) = truncate(text, 1000);
            return Err(Failure::Attempt(AttemptError::permanent(ToolError::Mcp {
                code,
                message: scrub(text, &headers.secret_values),
            })));
        }
        let result = message.get("result").cloned().ok_or_else(|| {
            AttemptError::permanent(ToolError::invalid_response(
                "a JSON-RPC response with neither result nor error",
            ))
        })?;
        Ok((result, session_id))
    }

    async fn notify(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        session: &Session,
        method: &str,
    ) -> Result<(), Failure> {
        let body = json!({"jsonrpc": "2.0", "method": method});
        let response = self.post(url, headers, Some(session), &body).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND && session.id.is_some() {
            return Err(Failure::Expired);
        }
        if !status.is_success() {
            let (body, _) = read_capped(response, 1200).await.unwrap_or_default();
            let mut e = status_error(status, &body, &headers.secret_values, None);
            if e.retry == Retry::IfIdempotent {
                e.retry = Retry::Always;
            }
            return Err(Failure::Attempt(e));
        }
        Ok(())
    }

    async fn post(
        &self,
        url: &Url,
        headers: &ResolvedHeaders,
        session: Option<&Session>,
        body: &Value,
    ) -> Result<reqwest::Response, AttemptError> {
        let mut map = headers.map.clone();
        map.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = session {
            if let Some(id) =
                s.id.as_deref()
                    .and_then(|id| HeaderValue::from_str(id).ok())
            {
                map.insert("mcp-session-id", id);
            }
            if let Ok(v) = HeaderValue::from_str(&s.protocol) {
                map.insert("mcp-protocol-version", v);
            }
        }
        let response = self
            .client
            .post(url.clone())
            .headers(map)
            .body(body.to_string())
            .send()
            .await
            .map_err(transport_error)?;
        if response.status().is_redirection() {
            // Following would mean re-checking the target and re-sending credentials; MCP
            // endpoints have one URL, so the configuration should name it.
            return Err(AttemptError::permanent(ToolError::misconfigured(
                "the MCP server answered with a redirect; set spec.mcp.url to the final URL",
            )));
        }
        Ok(response)
    }

    /// The JSON-RPC message answering request `id`, from a JSON body or an SSE stream.
    async fn response(
        &self,
        response: reqwest::Response,
        id: u64,
        secrets: &[String],
    ) -> Result<Value, AttemptError> {
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let (body, _) = read_capped(response, 1200).await.unwrap_or_default();
            return Err(status_error(status, &body, secrets, retry_after));
        }
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"));
        if is_sse {
            return read_sse(response, id, self.settings.max_response_bytes).await;
        }
        let (body, complete) = read_capped(response, self.settings.max_response_bytes)
            .await
            .map_err(|e| transient(format!("reading the response failed: {e}")))?;
        if !complete {
            return Err(AttemptError::permanent(ToolError::invalid_response(
                "the MCP response is too large",
            )));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            AttemptError::permanent(ToolError::invalid_response(format!(
                "the MCP response is not JSON: {e}"
            )))
        })?;
        find_response(value, id).ok_or_else(|| {
            AttemptError::permanent(ToolError::invalid_response(
                "the MCP response does not answer the request",
            ))
        })
    }

    /// `tools/call` result → output: `isError` becomes [`ToolError::ToolFailed`];
    /// `structuredContent` is preferred; otherwise the text of `content` items, joined.
    fn map_result(&self, result: Value, secrets: &[String]) -> Result<ToolOutput, ToolError> {
        let max = self.settings.max_output_bytes;
        let text = content_text(&result);
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            let text = scrub(&text, secrets);
            let (cut, _) = truncate(&text, 2000);
            return Err(ToolError::ToolFailed {
                message: if cut.is_empty() {
                    "no details".to_owned()
                } else {
                    cut.to_owned()
                },
            });
        }
        if let Some(structured) = result.get("structuredContent").filter(|v| !v.is_null()) {
            let mut value = structured.clone();
            scrub_json(&mut value, secrets);
            return Ok(ToolOutput::json(value, max));
        }
        Ok(ToolOutput::text(&scrub(&text, secrets), max))
    }
}

fn expired_as_transient(f: Failure) -> AttemptError {
    match f {
        Failure::Attempt(e) => e,
        Failure::Expired => transient("the MCP server dropped the new session".to_owned()),
    }
}

fn fingerprint(headers: &HeaderMap) -> String {
    let mut hasher = Sha256::new();
    let mut pairs: Vec<_> = headers.iter().collect();
    pairs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (name, value) in pairs {
        hasher.update(name.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}
