//! The compiled bundle's document types (version [`BUNDLE_SCHEMA_VERSION`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::SecretKeyRef;
use crate::flag::{FlagState, RolloutShare, TargetingRule};
use crate::tenant::{BudgetAction, JwtAlgorithm, OnDelete, ProviderType};
use crate::tool::{BuiltinTool, HttpTool, McpTool, ToolType};
use crate::workflow::Node;

/// Version of the bundle document; the runtime refuses a bundle of another version.
pub const BUNDLE_SCHEMA_VERSION: u32 = 1;

/// Everything one tenant's runtime serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeBundle {
    /// [`BUNDLE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// SHA-256 (hex) of the canonical JSON of this document with `hash` empty.
    pub hash: String,
    /// Tenant-wide configuration.
    pub tenant: TenantConfig,
    /// Agents by name.
    pub agents: BTreeMap<String, CompiledAgent>,
    /// Tools by name.
    pub tools: BTreeMap<String, CompiledTool>,
    /// Workflows by name.
    pub workflows: BTreeMap<String, CompiledWorkflow>,
    /// Flags by key.
    pub flags: BTreeMap<String, CompiledFlag>,
}

impl RuntimeBundle {
    /// Computes the content hash of the document (ignoring the current `hash`).
    pub fn content_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash = String::new();
        let json = super::canonical_json(&copy).unwrap_or_default();
        super::sha256_hex(json.as_bytes())
    }

    /// True when `hash` matches the content: the document was not altered after compilation.
    pub fn verify_hash(&self) -> bool {
        self.hash == self.content_hash()
    }

    /// Canonical JSON of the bundle, the bytes the operator publishes.
    pub fn to_canonical_json(&self) -> String {
        super::canonical_json(self).unwrap_or_default()
    }
}

/// Tenant-wide configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantConfig {
    /// Tenant name.
    pub name: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Suspended tenants are refused.
    pub suspended: bool,
    /// Fate of the data on deletion.
    pub on_delete: OnDelete,
    /// Default agent of new conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_agent: Option<String>,
    /// Default workflow of new conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_workflow: Option<String>,
    /// Limits and budget.
    pub limits: LimitsConfig,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Models by name.
    pub models: BTreeMap<String, ModelConfig>,
    /// Authentication.
    pub auth: AuthConfig,
    /// Hosts allowed even on private addresses.
    pub egress_allowlist: Vec<String>,
    /// Data retention in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// Limits with the budget in integer micro-dollars.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Tenant requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tenant tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// Concurrent streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_streams: Option<u32>,
    /// Per API key requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key_requests_per_minute: Option<u32>,
    /// Per API key tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key_tokens_per_minute: Option<u32>,
    /// Per end user requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user_requests_per_minute: Option<u32>,
    /// Per end user tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user_tokens_per_minute: Option<u32>,
    /// Monthly budget in micro-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_micros: Option<i64>,
    /// Action when the budget is spent.
    pub budget_action: BudgetAction,
}

/// A provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    /// Kind of provider.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// Base URL (OpenAI-compatible providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Secret key holding the API key; mounted into the runtime, never inlined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Request timeout in milliseconds.
    pub timeout_ms: u32,
}

/// A model with prices in micro-dollars per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelConfig {
    /// Provider name.
    pub provider: String,
    /// Model id sent upstream.
    pub upstream_model: String,
    /// Micro-dollars per million input tokens.
    pub input_micros_per_mtok: i64,
    /// Micro-dollars per million output tokens.
    pub output_micros_per_mtok: i64,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
}

/// Authentication settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    /// API keys accepted.
    pub api_keys: bool,
    /// JWT trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

/// JWT trust with defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtConfig {
    /// Required issuer.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// JWKS URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Inline JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Pinned algorithms.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Claim naming the end user.
    pub user_claim: String,
}

/// An agent with references resolved and defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledAgent {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Fixed model (a key of `tenant.models`), if not routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Router policy, if routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// Fallback models, in order.
    pub fallbacks: Vec<String>,
    /// Flag that may choose the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_flag: Option<String>,
    /// System prompt template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Tools, in declared order.
    pub tools: Vec<String>,
    /// Agents it may transfer to.
    pub handoffs: Vec<String>,
    /// Knowledge collections.
    pub knowledge: Vec<String>,
    /// Temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Max tokens per answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Max model calls per turn.
    pub max_tool_iterations: u32,
    /// Messages of memory.
    pub memory_window: u32,
    /// Content revision.
    pub revision: String,
}

/// A tool with its resilience defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledTool {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Kind.
    #[serde(rename = "type")]
    pub type_: ToolType,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// HTTP configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTool>,
    /// MCP configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpTool>,
    /// Built-in configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinTool>,
    /// Resilience policy.
    pub resilience: ResilienceConfig,
    /// Calls wait for approval.
    pub require_approval: bool,
    /// Hosts allowed on private addresses for this tool (tenant allowlist included).
    pub egress_allow_hosts: Vec<String>,
    /// Content revision.
    pub revision: String,
}

/// Resilience with defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResilienceConfig {
    /// Timeout of one attempt.
    pub timeout_ms: u32,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff.
    pub initial_backoff_ms: u32,
    /// Backoff ceiling.
    pub max_backoff_ms: u32,
    /// Retry non-idempotent calls too.
    pub retry_non_idempotent: bool,
    /// Consecutive failures that open the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_failure_threshold: Option<u32>,
    /// Seconds the circuit stays open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_seconds: Option<u32>,
    /// Bulkhead size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// A workflow whose graph was checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledWorkflow {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// First node.
    pub start: String,
    /// Step bound.
    pub max_steps: u32,
    /// Deadline in seconds.
    pub timeout_seconds: u32,
    /// Nodes by id.
    pub nodes: BTreeMap<String, Node>,
    /// Content revision; runs record it.
    pub revision: String,
}

/// A flag.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledFlag {
    /// Key.
    pub key: String,
    /// FeatureFlag object that declares it.
    pub source: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// State.
    pub state: FlagState,
    /// Variants.
    pub variants: BTreeMap<String, Value>,
    /// Default variant.
    pub default_variant: String,
    /// Targeting rules.
    pub targeting: Vec<TargetingRule>,
    /// Rollout shares.
    pub rollout: Vec<RolloutShare>,
}
