//! `Tool`: something an agent or workflow can call.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::ValueFrom;

/// Desired state of a Tool (its `spec`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentry.dev",
    version = "v1alpha1",
    kind = "Tool",
    doc = "A tool: an HTTP endpoint, a tool on an MCP server, or a built-in, with its input schema and resilience policy.",
    plural = "tools",
    namespaced,
    shortname = "tl",
    category = "agentry",
    status = "ToolStatus",
    cel,
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message("metadata.name: a Tool name must be a DNS label (at most 63 characters, no dots) because models call tools by name"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Approval", type_ = "boolean", json_path = ".spec.requireApproval"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'http') == has(self.http)").message("spec.http must be set exactly when spec.type is http"))]
#[x_kube(validation = Rule::new("(self.type == 'mcp') == has(self.mcp)").message("spec.mcp must be set exactly when spec.type is mcp"))]
#[x_kube(validation = Rule::new("(self.type == 'builtin') == has(self.builtin)").message("spec.builtin must be set exactly when spec.type is builtin"))]
pub struct ToolSpec {
    /// What the tool does; the model reads it to decide when to call the tool.
    #[schemars(length(min = 1, max = 1024))]
    pub description: String,
    /// `http`, `mcp` or `builtin`; the block of the same name configures it.
    #[serde(rename = "type")]
    pub type_: ToolType,
    /// JSON Schema of the arguments; calls are validated against it before anything is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_object")]
    pub input_schema: Option<Value>,
    /// HTTP endpoint configuration (type `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTool>,
    /// MCP server configuration (type `mcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpTool>,
    /// Built-in tool configuration (type `builtin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinTool>,
    /// Timeouts, retries, circuit breaker and bulkhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<Resilience>,
    /// Every call waits for a person to approve it (`POST /api/v1/chat/approvals/{id}`).
    #[serde(default)]
    pub require_approval: bool,
    /// Hosts this tool may reach even when they resolve to private addresses, in addition to
    /// the Tenant's `spec.network.egressAllowlist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<ToolEgress>,
}

/// Kind of tool.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ToolType {
    /// An HTTP endpoint.
    Http,
    /// A tool on an MCP server (streamable HTTP transport).
    Mcp,
    /// A tool built into the runtime.
    Builtin,
}

/// An HTTP tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpTool {
    /// HTTP method (default GET).
    #[serde(default)]
    pub method: HttpMethod,
    /// URL, a minijinja template over `args` (values are URL-encoded); http or https only.
    #[schemars(regex(pattern = r"^https?://"), length(max = 4096))]
    pub url: String,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub headers: Vec<HttpHeader>,
    /// Request body, a minijinja template over `args` rendering JSON. Default for methods with
    /// a body: the arguments as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// JSON Pointer (RFC 6901) into the response selecting what the model sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(/.*)?$"), length(max = 1024))]
    pub response_path: Option<String>,
}

/// HTTP methods a tool may use.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum HttpMethod {
    /// GET (idempotent).
    #[default]
    GET,
    /// POST (not idempotent: not retried unless the tool allows it).
    POST,
    /// PUT (idempotent).
    PUT,
    /// PATCH (not idempotent).
    PATCH,
    /// DELETE (idempotent).
    DELETE,
}

impl HttpMethod {
    /// Whether repeating the request is safe by HTTP semantics.
    pub fn is_idempotent(self) -> bool {
        matches!(self, Self::GET | Self::PUT | Self::DELETE)
    }
}

/// A request header, inline or from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("a header sets exactly one of value and valueFrom"))]
pub struct HttpHeader {
    /// Header name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), length(max = 256))]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// Value read from a Secret in the tool's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

/// A tool served by an MCP server over streamable HTTP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct McpTool {
    /// MCP endpoint URL.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub url: String,
    /// Tool name on the server.
    #[schemars(length(min = 1, max = 256))]
    pub tool: String,
    /// Extra request headers (for example authorization from a Secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub headers: Vec<HttpHeader>,
}

/// A built-in tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.name == 'run_workflow') == has(self.workflow)").message("spec.builtin.workflow must be set exactly when spec.builtin.name is run_workflow"))]
pub struct BuiltinTool {
    /// Which built-in.
    pub name: BuiltinName,
    /// Workflow started by `run_workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub workflow: Option<String>,
}

/// Built-in tools.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinName {
    /// Escalate the conversation to a human: marks it escalated and emits an event.
    Handoff,
    /// Transfer the conversation to another agent the current agent lists in `handoffs`.
    TransferToAgent,
    /// The current time in UTC.
    CurrentTime,
    /// Search the agent's knowledge collections.
    KnowledgeSearch,
    /// Start a workflow with the arguments as input and return its result.
    RunWorkflow,
}

/// Resilience policy of a tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resilience {
    /// Timeout of one attempt in milliseconds (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 600_000))]
    pub timeout_ms: Option<u32>,
    /// Retries after a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Calls in flight at once per runtime replica (bulkhead); excess calls fail fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_concurrency: Option<u32>,
}

/// Retries with exponential backoff and full jitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.initialBackoffMs) || !has(self.maxBackoffMs) || self.initialBackoffMs <= self.maxBackoffMs").message("retries: initialBackoffMs must not exceed maxBackoffMs"))]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 10))]
    pub max: u32,
    /// First backoff in milliseconds (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60_000))]
    pub initial_backoff_ms: Option<u32>,
    /// Backoff ceiling in milliseconds (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600_000))]
    pub max_backoff_ms: Option<u32>,
    /// Retry methods that are not idempotent (POST, PATCH) too. Only set this when the
    /// endpoint honours the `Idempotency-Key` header the runtime sends.
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

/// Circuit breaker: opens after consecutive failures, half-opens after a pause.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failures that open the circuit.
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// Seconds the circuit stays open before one trial call.
    #[schemars(range(min = 1, max = 3600))]
    pub open_seconds: u32,
}

/// Extra egress for one tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ToolEgress {
    /// Host names (or `*.domain`) this tool may reach even on private addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            regex(pattern = r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"),
            length(max = 253)
        )
    )]
    pub allow_hosts: Vec<String>,
}

/// Observed state of a Tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ToolStatus {
    /// Hash of the tool as compiled into the tenant's bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: compiled into the bundle, or the compiler's diagnostic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
