//! Tools: what agents and workflows call. HTTP endpoints, tools on MCP servers and built-ins,
//! each behind argument validation, egress control (see [`ssrf`]) and per-tool resilience
//! (timeout, retries, circuit breaker, bulkhead; see [`resilience`]).
//!
//! The agents loop (and the workflow engine) calls [`ToolRuntime::call`] once a call is allowed
//! to run, that is after any approval the tool requires: this module never asks for approval.
//! A call ends in a [`ToolOutcome`]: output for the model, or a [`ControlAction`] the caller
//! carries out (handoff, transfer, knowledge search, workflow); or in a [`ToolError`] whose
//! message is fit to give back to the model.

mod builtin;
pub(crate) mod error;
mod http;
mod mcp;
pub mod resilience;
pub mod secrets;
pub mod ssrf;
pub mod template;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_crds::bundle::CompiledTool;
use agentry_crds::tool::ToolType;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use serde_json::Value;

pub use error::ToolError;
pub use resilience::{Clock, Jitter, ManualClock, MaxJitter, RandomJitter, SystemClock};
pub use secrets::{ChainedSecrets, EnvSecrets, MountedSecrets, SecretSource, StaticSecrets};

use crate::metrics::{Metrics, ToolLabels};
use resilience::{BreakerPolicy, Bulkhead, CircuitBreaker, CircuitState, RetryPlan};
use ssrf::{EgressAllowlist, VettingResolver};

/// Bytes of a response body read at most; the rest is never downloaded.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Bytes of output handed to the model at most; longer output is cut and marked truncated.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Redirects an HTTP tool follows at most.
pub const MAX_REDIRECTS: usize = 5;

/// Settings of the tool runtime's HTTP clients.
#[derive(Clone, Debug)]
pub struct ToolSettings {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// `User-Agent` of tool requests.
    pub user_agent: String,
    /// See [`MAX_RESPONSE_BYTES`].
    pub max_response_bytes: usize,
    /// See [`MAX_OUTPUT_BYTES`].
    pub max_output_bytes: usize,
}

impl Default for ToolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            user_agent: format!("agentry-runtime/{}", env!("CARGO_PKG_VERSION")),
            max_response_bytes: MAX_RESPONSE_BYTES,
            max_output_bytes: MAX_OUTPUT_BYTES,
        }
    }
}

/// Who is calling, with what credentials and until when.
#[derive(Clone, Debug)]
pub struct ToolContext {
    /// Tenant name (metrics labels, state keys).
    pub tenant: String,
    /// Where header Secrets come from.
    pub secrets: Arc<dyn SecretSource>,
    /// Sent as `Idempotency-Key` on HTTP tool requests (the workflow engine passes
    /// `<run-id>/<step-id>`, the agents loop the tool-call id) so a retried or replayed call
    /// can be deduplicated by the endpoint.
    pub idempotency_key: Option<String>,
    /// The call fails with `deadline_exceeded` once this passes, whatever the tool's timeout.
    pub deadline: Option<Instant>,
}

impl ToolContext {
    /// A context without idempotency key or deadline.
    pub fn new(tenant: impl Into<String>, secrets: Arc<dyn SecretSource>) -> Self {
        Self {
            tenant: tenant.into(),
            secrets,
            idempotency_key: None,
            deadline: None,
        }
    }

    /// Sets the idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// How a call ended when it did not fail.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolOutcome {
    /// A result for the model.
    Output(ToolOutput),
    /// Something only the caller can do; see [`ControlAction`].
    Control(ControlAction),
}

/// A tool's result as the model will see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolOutput {
    /// JSON from the tool, or a string for text responses.
    pub content: Value,
    /// The content was cut to [`MAX_OUTPUT_BYTES`] (and is then a string).
    pub truncated: bool,
}

impl ToolOutput {
    /// The text to put in the tool-result message.
    pub fn to_model_text(&self) -> String {
        let mut text = match &self.content {
            Value::String(s) => s.clone(),
            Value::Null => "(no content)".to_owned(),
            other => other.to_string(),
        };
        if self.truncated {
            text.push_str("\n[output truncated]");
        }
        text
    }

    /// JSON output, cut to `max` bytes as text when its serialization is longer.
    pub(crate) fn json(value: Value, max: usize) -> Self {
        let text = value.to_string();
        if text.len() <= max {
            return Self {
                content: value,
                truncated: false,
            };
        }
        let (cut, _) = error::truncate(&text, max);
        Self {
            content: Value::String(cut.to_owned()),
            truncated: true,
        }
    }

    /// Text output, cut to `max` bytes.
    pub(crate) fn text(text: &str, max: usize) -> Self {
        let (cut, truncated) = error::truncate(text, max);
        Self {
            content: Value::String(cut.to_owned()),
            truncated,
        }
    }
}

/// Built-ins that act on the conversation rather than compute a value. The agents loop (or
/// the workflow engine) carries them out and tells the model what happened:
///
/// - `Handoff`: mark the conversation escalated, record an event, stop the loop and tell the
///   user a person will take over.
/// - `Transfer`: check `agent` is in the current agent's `handoffs`, switch the conversation
///   to it (recording an event) and continue the loop with the new agent; an agent not listed
///   goes back to the model as an error.
/// - `KnowledgeSearch`: search the agent's collections (optionally narrowed to `collections`)
///   and give the hits to the model as the tool result.
/// - `RunWorkflow`: start `workflow` with `input`, wait for it (within the call's deadline) and
///   give its output to the model as the tool result.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ControlAction {
    /// Escalate to a human.
    Handoff {
        /// Why, as the model put it.
        reason: Option<String>,
    },
    /// Transfer to another agent.
    Transfer {
        /// The agent to transfer to.
        agent: String,
        /// Why, as the model put it.
        reason: Option<String>,
    },
    /// Search knowledge.
    KnowledgeSearch {
        /// The query.
        query: String,
        /// Collections to search; empty means all the agent's collections.
        collections: Vec<String>,
        /// Hits wanted.
        limit: Option<u32>,
    },
    /// Run a workflow.
    RunWorkflow {
        /// Workflow name.
        workflow: String,
        /// Its input: the call's arguments.
        input: Value,
    },
}

/// Per (tenant, tool) state, rebuilt when the tool's revision changes.
#[derive(Debug)]
pub(crate) struct ToolState {
    revision: String,
    validator: jsonschema::Validator,
    pub(crate) breaker: Arc<CircuitBreaker>,
    bulkhead: Bulkhead,
    pub(crate) allow: Arc<EgressAllowlist>,
    pub(crate) client: Option<reqwest::Client>,
}

/// Runs tools. One per process, shared by every tenant; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ToolRuntime {
    settings: ToolSettings,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    states: DashMap<(String, String), Arc<ToolState>>,
    sessions: mcp::Sessions,
}

impl ToolRuntime {
    /// A runtime with the real clock and random jitter.
    pub fn new(settings: ToolSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            metrics,
            clock: Arc::new(SystemClock),
            jitter: Arc::new(RandomJitter),
            states: DashMap::new(),
            sessions: mcp::Sessions::default(),
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the backoff jitter (tests).
    pub fn with_jitter(mut self, jitter: Arc<dyn Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    /// The breaker state of a tool, if it was called since its last change.
    pub fn circuit_state(&self, tenant: &str, tool: &str) -> Option<CircuitState> {
        self.states
            .get(&(tenant.to_owned(), tool.to_owned()))
            .map(|s| s.breaker.state())
    }

    /// Calls `tool` with `args`.
    pub async fn call(
        &self,
        ctx: &ToolContext,
        tool: &CompiledTool,
        args: Value,
    ) -> Result<ToolOutcome, ToolError> {
        let started = Instant::now();
        let result = self.call_inner(ctx, tool, args).await;
        let labels = ToolLabels {
            tenant: ctx.tenant.clone(),
            tool: tool.name.clone(),
            outcome: match &result {
                Ok(ToolOutcome::Output(_)) => "ok",
                Ok(ToolOutcome::Control(_)) => "control",
                Err(e) => e.code(),
            }
            .to_owned(),
        };
        self.metrics.tool_called(labels, started.elapsed());
        if let Err(e) = &result {
            tracing::info!(tenant = %ctx.tenant, tool = %tool.name, code = e.code(), "tool call failed: {e}");
        }
        result
    }

    async fn call_inner(
        &self,
        ctx: &ToolContext,
        tool: &CompiledTool,
        args: Value,
    ) -> Result<ToolOutcome, ToolError> {
        // Models often send no arguments at all for a tool that takes none.
        let args = if args.is_null() {
            Value::Object(Default::default())
        } else {
            args
        };
        let state = self.state(&ctx.tenant, tool)?;
        validate(&state.validator, &args)?;
        let output = match tool.type_ {
            ToolType::Builtin => {
                let builtin = tool.builtin.as_ref().ok_or_else(|| {
                    ToolError::misconfigured("a builtin tool without spec.builtin")
                })?;
                return builtin::run(builtin, &args, self.clock.as_ref(), &self.settings);
            }
            ToolType::Http => {
                let spec = tool
                    .http
                    .as_ref()
                    .ok_or_else(|| ToolError::misconfigured("an http tool without spec.http"))?;
                let (client, _slot) = enter(&state)?;
                let plan = self.plan(tool, ctx, spec.method.is_idempotent());
                let call = http::HttpCall {
                    ctx,
                    spec,
                    client,
                    allow: &state.allow,
                    settings: &self.settings,
                };
                call.run(&args, plan, &state.breaker, self.jitter.as_ref())
                    .await?
            }
            ToolType::Mcp => {
                let spec = tool
                    .mcp
                    .as_ref()
                    .ok_or_else(|| ToolError::misconfigured("an mcp tool without spec.mcp"))?;
                let (client, _slot) = enter(&state)?;
                // tools/call may have effects: repeated only when the tool says so.
                let plan = self.plan(tool, ctx, false);
                let call = mcp::McpCall {
                    ctx,
                    spec,
                    client,
                    allow: &state.allow,
                    settings: &self.settings,
                    sessions: &self.sessions,
                };
                call.run(args, plan, &state.breaker, self.jitter.as_ref())
                    .await?
            }
        };
        Ok(ToolOutcome::Output(output))
    }

    fn plan(&self, tool: &CompiledTool, ctx: &ToolContext, idempotent: bool) -> RetryPlan {
        let r = &tool.resilience;
        RetryPlan {
            max_retries: r.max_retries,
            initial_backoff: Duration::from_millis(u64::from(r.initial_backoff_ms.max(1))),
            max_backoff: Duration::from_millis(u64::from(r.max_backoff_ms.max(1))),
            attempt_timeout: Duration::from_millis(u64::from(r.timeout_ms.max(1))),
            repeatable: idempotent || r.retry_non_idempotent,
            deadline: ctx.deadline,
        }
    }

    fn state(&self, tenant: &str, tool: &CompiledTool) -> Result<Arc<ToolState>, ToolError> {
        let key = (tenant.to_owned(), tool.name.clone());
        if let Some(s) = self.states.get(&key)
            && s.revision == tool.revision
        {
            return Ok(s.clone());
        }
        // Built under the entry's lock so concurrent first calls share one breaker and one
        // bulkhead.
        match self.states.entry(key) {
            Entry::Occupied(e) if e.get().revision == tool.revision => Ok(e.get().clone()),
            Entry::Occupied(mut e) => {
                let state = Arc::new(self.build_state(tenant, tool)?);
                e.insert(state.clone());
                Ok(state)
            }
            Entry::Vacant(e) => {
                let state = Arc::new(self.build_state(tenant, tool)?);
                e.insert(state.clone());
                Ok(state)
            }
        }
    }

    fn build_state(&self, tenant: &str, tool: &CompiledTool) -> Result<ToolState, ToolError> {
        let validator = jsonschema::validator_for(&tool.input_schema).map_err(|e| {
            ToolError::misconfigured(format!("the input schema does not compile: {e}"))
        })?;
        let r = &tool.resilience;
        let gauge = self
            .metrics
            .tool_circuit_state
            .get_or_create(&crate::metrics::TenantToolLabels {
                tenant: tenant.to_owned(),
                tool: tool.name.clone(),
            })
            .clone();
        let policy = BreakerPolicy {
            // No threshold: no breaker.
            failure_threshold: r.circuit_failure_threshold.unwrap_or(0),
            open_for: Duration::from_secs(u64::from(r.circuit_open_seconds.unwrap_or(30))),
        };
        let breaker = Arc::new(CircuitBreaker::new(policy, self.clock.clone(), Some(gauge)));
        let allow = Arc::new(EgressAllowlist::new(&tool.egress_allow_hosts));
        let client = match tool.type_ {
            ToolType::Builtin => None,
            ToolType::Http | ToolType::Mcp => Some(self.client(allow.clone())?),
        };
        Ok(ToolState {
            revision: tool.revision.clone(),
            validator,
            breaker,
            bulkhead: Bulkhead::new(r.max_concurrency),
            allow,
            client,
        })
    }

    /// A client whose DNS step enforces the tool's egress rules and that never follows
    /// redirects or retries on its own (both are done here, with checks).
    fn client(&self, allow: Arc<EgressAllowlist>) -> Result<reqwest::Client, ToolError> {
        reqwest::Client::builder()
            .dns_resolver(VettingResolver::new(allow))
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .no_proxy()
            .connect_timeout(self.settings.connect_timeout)
            .pool_idle_timeout(self.settings.pool_idle_timeout)
            .user_agent(self.settings.user_agent.clone())
            .build()
            .map_err(|e| ToolError::misconfigured(format!("building the HTTP client: {e}")))
    }
}

/// Admission of a network call: an open breaker fails fast before a bulkhead slot is taken;
/// a full bulkhead fails fast. The slot is held until the guard drops.
fn enter(
    state: &ToolState,
) -> Result<(&reqwest::Client, Option<tokio::sync::OwnedSemaphorePermit>), ToolError> {
    if state.breaker.state() == CircuitState::Open
        && let Err(wait) = state.breaker.try_acquire()
    {
        return Err(ToolError::CircuitOpen {
            retry_after_secs: resilience::retry_after_secs(wait),
        });
    }
    let slot = state.bulkhead.try_enter().ok_or(ToolError::Overloaded)?;
    let client = state
        .client
        .as_ref()
        .ok_or_else(|| ToolError::misconfigured("no HTTP client for this tool"))?;
    Ok((client, slot))
}

/// Validates `args` against the schema; the message names the path of each of the first
/// problems so the model can fix its call.
fn validate(validator: &jsonschema::Validator, args: &Value) -> Result<(), ToolError> {
    match crate::schema::problems(validator, args, |path| {
        format!("at {}", if path.is_empty() { "/" } else { path })
    }) {
        None => Ok(()),
        Some(details) => Err(ToolError::InvalidArguments { details }),
    }
}
