//! `Tenant`: one customer of the platform (cluster-scoped).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// Longest Tenant name: leaves room for `tenant-<name>` (a DNS label, at most 63 characters)
/// and for the database role `agentry_tenant_<name>` (PostgreSQL identifiers: at most 63 bytes).
pub const MAX_TENANT_NAME: usize = 40;

/// Desired state of a Tenant (its `spec`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "agentry.dev",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "A customer of the platform. The operator turns it into a namespace with guard rails, a PostgreSQL role restricted by row-level security, a compiled runtime bundle and a runtime Deployment that serves the tenant's end users.",
    plural = "tenants",
    shortname = "tn",
    category = "agentry",
    status = "TenantStatus",
    cel,
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40").message("metadata.name: a Tenant name must be a DNS label of at most 40 characters that starts with a letter, so that its namespace and database role names fit")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.__namespace__) || has(self.__namespace__)").message("spec.namespace is immutable: it cannot be removed once set"))]
#[x_kube(validation = Rule::new("!has(self.models) || self.models.all(m, has(self.providers) && self.providers.exists(p, p.name == m.provider))").message("spec.models: every model must name a provider declared in spec.providers"))]
pub struct TenantSpec {
    /// Human-readable name shown in dashboards and on invoices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// Commercial plan; the runtime exposes it to flag targeting and the router as `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{0,31}$"))]
    pub plan: Option<String>,
    /// Namespace that holds the tenant's runtime and resources. Defaults to `tenant-<name>`.
    /// Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.namespace is immutable"))]
    pub namespace: Option<String>,
    /// Scales the runtime to zero and refuses the tenant's requests while keeping its data.
    #[serde(default)]
    pub suspended: bool,
    /// What happens to the tenant's rows in PostgreSQL when the Tenant is deleted: `Retain`
    /// keeps them (the role is dropped either way), `Delete` removes them.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Where a new chat conversation starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatSpec>,
    /// The tenant's runtime Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// Rate limits and the monthly budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Model providers the tenant's models are served by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub providers: Vec<ProviderSpec>,
    /// The tenant's model catalog: names agents and workflows refer to, with prices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub models: Vec<ModelSpec>,
    /// How end users and services authenticate to the tenant's runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Network rules for the tenant's runtime and tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// ResourceQuota of the tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Days to keep conversations, events and usage records. Unset keeps them forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: Option<u32>,
}

/// Fate of the tenant's data on deletion.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum OnDelete {
    /// Keep the tenant's rows; only its database role is dropped.
    #[default]
    Retain,
    /// Delete the tenant's rows with its role.
    Delete,
}

/// Where a new conversation starts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.defaultAgent) && has(self.defaultWorkflow))").message("spec.chat: set defaultAgent or defaultWorkflow, not both"))]
pub struct ChatSpec {
    /// Agent that answers a new conversation unless the client names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub default_agent: Option<String>,
    /// Workflow that a new conversation runs instead of an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub default_workflow: Option<String>,
}

/// The tenant's runtime Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Replicas when autoscaling is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// HorizontalPodAutoscaler on CPU; when set, it owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Container resources of the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Runtime image override (defaults to the operator's configured image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Most API requests in progress at once per replica; past it a request is answered 503
    /// `overloaded` at once (the runtime's `--max-in-flight`, default 1024; 0 turns the cap
    /// off). See docs/limits.md, "Overload: shedding".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_in_flight: Option<u32>,
    /// Serve connections from a thread of their own, so that refusals past `maxInFlight` stay
    /// fast on a CPU-bound replica, for some CPU per admitted request (the runtime's
    /// `--http-front-thread`, default false). See docs/limits.md, "The front thread".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_front_thread: Option<bool>,
    /// Write usage records and relay events from a thread of their own at the lowest CPU
    /// priority, so that batch work does not delay requests (the runtime's
    /// `--background-thread`, default true; false runs that work among the requests, which
    /// keeps usage records from waiting longer on a saturated replica). See docs/limits.md,
    /// "The background thread".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_thread: Option<bool>,
}

/// CPU-based autoscaling of the runtime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("spec.runtime.autoscaling: minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    /// Lower bound of replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: Option<i32>,
    /// Upper bound of replicas.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU utilisation the autoscaler aims for (default 70).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// Rate limits and the monthly budget of a tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.budgetAction) || has(self.monthlyBudgetUsd)").message("spec.limits.budgetAction needs spec.limits.monthlyBudgetUsd"))]
pub struct LimitsSpec {
    /// Requests per minute for the whole tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub requests_per_minute: Option<u32>,
    /// LLM tokens (input + output) per minute for the whole tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub tokens_per_minute: Option<u32>,
    /// Streams (SSE responses and WebSocket connections) open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub concurrent_streams: Option<u32>,
    /// Limits applied to each API key separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key: Option<RateSpec>,
    /// Limits applied to each end user (JWT subject) separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<RateSpec>,
    /// Spend allowed per calendar month (UTC), in USD as a decimal string such as "500.00".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub monthly_budget_usd: Option<String>,
    /// What happens when the budget is spent: `Block` refuses requests that would spend more
    /// (HTTP 402); `Notify` keeps serving and emits events at 50, 80 and 100 percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_action: Option<BudgetAction>,
}

/// A pair of per-minute limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateSpec {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub requests_per_minute: Option<u32>,
    /// LLM tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub tokens_per_minute: Option<u32>,
}

/// What the runtime does when the monthly budget is spent.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum BudgetAction {
    /// Refuse requests that would exceed the budget with HTTP 402.
    #[default]
    Block,
    /// Keep serving; emit `budget.threshold` events at 50, 80 and 100 percent.
    Notify,
}

/// A model provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'openai' || has(self.baseUrl)").message("spec.providers: a provider of type openai needs baseUrl"))]
#[x_kube(validation = Rule::new("self.type != 'builtin' || (!has(self.baseUrl) && !has(self.apiKeySecretRef))").message("spec.providers: a builtin provider takes no baseUrl or apiKeySecretRef"))]
pub struct ProviderSpec {
    /// Name models refer to.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// `openai` for any OpenAI-compatible chat completions API; `builtin` for the offline
    /// provider that answers deterministically with no key and no network.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// Base URL of the API, up to and including the version (".../v1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub base_url: Option<String>,
    /// Secret (in the operator's namespace) holding the API key; the operator projects it
    /// into the tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Upstream request timeout in milliseconds (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600_000))]
    pub timeout_ms: Option<u32>,
}

/// Kind of model provider.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// An OpenAI-compatible HTTP API.
    Openai,
    /// The built-in offline provider.
    Builtin,
}

/// A model in the tenant's catalog.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Name agents and workflows use.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9._:/]*$"), length(max = 128))]
    pub name: String,
    /// Provider that serves it.
    #[schemars(length(min = 1, max = 63))]
    pub provider: String,
    /// Model id sent upstream, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub upstream_model: Option<String>,
    /// Price of one million input tokens in USD (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "inputPricePerMTokUsd")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub input_price_per_mtok_usd: Option<String>,
    /// Price of one million output tokens in USD (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "outputPricePerMTokUsd")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub output_price_per_mtok_usd: Option<String>,
    /// Context window in tokens; the memory window is trimmed to fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 10_000_000))]
    pub context_window: Option<u32>,
}

/// Authentication of callers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Accept the tenant's API keys (`agk_...`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<bool>,
    /// Accept end-user JWTs from the tenant's identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// Trust in a JWT issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksUrl) != has(self.jwks)").message("spec.auth.jwt: set exactly one of jwksUrl and jwks"))]
pub struct JwtSpec {
    /// Required `iss` claim.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    pub audiences: Vec<String>,
    /// URL of the issuer's JSON Web Key Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub jwks_url: Option<String>,
    /// Inline JSON Web Key Set (a JSON document with a `keys` array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 65536))]
    pub jwks: Option<String>,
    /// Signature algorithms accepted; anything else (and `none`) is refused. Default `[RS256]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Claim that names the end user (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub user_claim: Option<String>,
}

/// JWT signature algorithms the runtime accepts.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// Network rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Hosts the tenant's tools and providers may reach even when they resolve to private
    /// addresses; also opened in the tenant's egress NetworkPolicy. `*.example.com` matches
    /// subdomains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            regex(pattern = r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"),
            length(max = 253)
        )
    )]
    pub egress_allowlist: Vec<String>,
}

/// ResourceQuota figures for the tenant namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Total CPU requests in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Total memory requests in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Quantity>,
}

/// Observed state of a Tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Summary: Pending, Provisioning, Ready, Degraded, Suspended or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,
    /// Namespace the tenant lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// URL of the tenant's runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Content hash of the published bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_hash: Option<String>,
    /// How many objects of each kind the bundle holds, and how many were left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<BundleCounts>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, NamespaceReady, DatabaseReady, BundleReady and RuntimeReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Summary phase of a tenant.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantPhase {
    /// Seen, nothing provisioned yet.
    Pending,
    /// Being provisioned.
    Provisioning,
    /// Everything ready.
    Ready,
    /// Serving, but something is wrong (see conditions).
    Degraded,
    /// Suspended by its spec.
    Suspended,
    /// Being deleted.
    Terminating,
}

/// Objects in a bundle, by kind.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BundleCounts {
    /// Agents compiled into the bundle.
    pub agents: u32,
    /// Tools compiled into the bundle.
    pub tools: u32,
    /// Workflows compiled into the bundle.
    pub workflows: u32,
    /// Feature flags compiled into the bundle.
    pub flags: u32,
    /// Objects left out because they are invalid.
    pub invalid: u32,
}

impl Tenant {
    /// Namespace of the tenant: `spec.namespace` or `tenant-<name>`.
    pub fn namespace_name(&self) -> String {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        self.spec
            .namespace
            .clone()
            .unwrap_or_else(|| format!("tenant-{name}"))
    }

    /// Extra labels a tenant's objects carry.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let name = self.metadata.name.clone().unwrap_or_default();
        BTreeMap::from([(crate::common::TENANT_LABEL.to_owned(), name)])
    }
}
