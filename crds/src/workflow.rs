//! `Workflow`: a declarative, durable graph of steps.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Target name that ends a run successfully without an explicit `end` node.
pub const END: &str = "end";

/// Desired state of a Workflow (its `spec`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentry.dev",
    version = "v1alpha1",
    kind = "Workflow",
    doc = "A workflow: nodes connected by `next`, `branch`, `parallel` and `onError` edges, run durably by the runtime's orchestrator. Conditions are CEL over `input`, `state` and `flags`; prompts and arguments are minijinja templates over the same names.",
    plural = "workflows",
    namespaced,
    shortname = "wf",
    category = "agentry",
    status = "WorkflowStatus",
    cel,
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message("metadata.name: a Workflow name must be a DNS label (at most 63 characters, no dots) because the API and run_workflow tools refer to it by name"),
    printcolumn(name = "Start", type_ = "string", json_path = ".spec.start"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodeCount"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.nodes.exists(n, n.id == self.start)").message("spec.start must name a node in spec.nodes"))]
pub struct WorkflowSpec {
    /// What the workflow does (shown when an agent may call it as a tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The run's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<WorkflowInput>,
    /// Id of the first node.
    // maxLength repeats the pattern's bound for the API server's CEL cost estimate.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"), length(max = 63))]
    pub start: String,
    /// Bounds of one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<WorkflowLimits>,
    /// The nodes; each sets exactly one kind.
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub nodes: Vec<Node>,
}

/// The input of a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowInput {
    /// JSON Schema the input must satisfy; a run with other input is refused with HTTP 422.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_object")]
    pub schema: Option<Value>,
}

/// Bounds of one run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowLimits {
    /// Most steps a run may execute (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_steps: Option<u32>,
    /// Deadline of the run in seconds from its start, waits for approval included
    /// (default 86400 * 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub timeout_seconds: Option<u32>,
}

/// One node of a workflow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.agent) ? 1 : 0) + (has(self.llm) ? 1 : 0) + (has(self.tool) ? 1 : 0) + (has(self.retrieve) ? 1 : 0) + (has(self.branch) ? 1 : 0) + (has(self.parallel) ? 1 : 0) + (has(self.transform) ? 1 : 0) + (has(self.approval) ? 1 : 0) + (has(self.handoff) ? 1 : 0) + (has(self.end) ? 1 : 0) == 1").message("a node sets exactly one of agent, llm, tool, retrieve, branch, parallel, transform, approval, handoff, end"))]
#[x_kube(validation = Rule::new("!has(self.end) || !has(self.next)").message("an end node has no next"))]
pub struct Node {
    /// Unique id within the workflow.
    // maxLength repeats the pattern's bound for the API server's CEL cost estimate.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"), length(max = 63))]
    pub id: String,
    /// Ask an Agent (with its tools) and store its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentNode>,
    /// One model call without tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmNode>,
    /// Call a Tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolNode>,
    /// Search a knowledge collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieve: Option<RetrieveNode>,
    /// Go to the first case whose CEL condition holds, else to `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub branch: Option<Vec<BranchCase>>,
    /// Run several nodes concurrently, then continue to `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<ParallelNode>,
    /// Compute state values with CEL expressions or templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformNode>,
    /// Pause until a person approves or denies, or the wait times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalNode>,
    /// Escalate to a human: emits an event, then pauses or ends the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffNode>,
    /// End the run with a result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndNode>,
    /// State key the node's output is written to (default: the node id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub output: Option<String>,
    /// Node that runs after this one; `end` (or nothing) ends the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))]
    pub next: Option<String>,
    /// Node that runs when this node fails after its retries, instead of failing the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))]
    pub on_error: Option<String>,
    /// Timeout of one attempt in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400))]
    pub timeout_seconds: Option<u32>,
    /// Retries of a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<NodeRetries>,
    /// Most times one run may enter this node. Every cycle must contain a node with a bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_visits: Option<u32>,
}

/// Retries of a node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeRetries {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 10))]
    pub max: u32,
    /// First backoff in milliseconds, doubled each retry (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600_000))]
    pub backoff_ms: Option<u32>,
}

/// Ask an agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentNode {
    /// Agent in this namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The message, a template.
    #[schemars(length(min = 1, max = 65536))]
    pub prompt: String,
}

/// One model call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LlmNode {
    /// Model from the Tenant's catalog.
    #[schemars(length(min = 1, max = 128))]
    pub model: String,
    /// System prompt, a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub system: Option<String>,
    /// User prompt, a template.
    #[schemars(length(min = 1, max = 65536))]
    pub prompt: String,
    /// Parse the answer as JSON into the output.
    #[serde(default)]
    pub json: bool,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Most tokens of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_tokens: Option<u32>,
}

/// Call a tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ToolNode {
    /// Tool in this namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Arguments; string values are templates, other JSON values pass as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::schema::preserve_map")]
    pub args: BTreeMap<String, Value>,
}

/// Search knowledge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetrieveNode {
    /// Knowledge collection.
    #[schemars(length(min = 1, max = 63))]
    pub collection: String,
    /// The query, a template.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Passages returned (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub top_k: Option<u32>,
}

/// One case of a branch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BranchCase {
    /// CEL condition over `input`, `state` and `flags`; must yield a boolean.
    #[schemars(length(min = 1, max = 4096))]
    pub when: String,
    /// Node to go to when the condition holds.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))]
    pub next: String,
}

/// Fan out to several nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParallelNode {
    /// Nodes run concurrently, each once; they write their outputs and have no `next`.
    #[schemars(
        length(min = 1, max = 32),
        inner(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))
    )]
    pub nodes: Vec<String>,
    /// Most nodes running at once (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub max_concurrency: Option<u32>,
}

/// Write state values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cel) || has(self.template)").message("a transform sets cel or template"))]
pub struct TransformNode {
    /// State key to CEL expression.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cel: BTreeMap<String, String>,
    /// State key to template (renders a string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template: BTreeMap<String, String>,
}

/// Wait for a person.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalNode {
    /// What the approver is asked, a template.
    #[schemars(length(min = 1, max = 4096))]
    pub message: String,
    /// Seconds to wait before `onTimeout` applies (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub timeout_seconds: Option<u32>,
    /// Decision taken when nobody answers in time (default Deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<ApprovalDecision>,
    /// Node that runs after a denial; without it a denial ends the run as `denied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))]
    pub on_deny: Option<String>,
}

/// An approval decision.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalDecision {
    /// Continue to `next`.
    Approve,
    /// Go to `onDeny`, or end the run as denied.
    Deny,
}

/// Escalate to a human.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HandoffNode {
    /// Why, a template; carried by the `workflow.handoff` event.
    #[schemars(length(min = 1, max = 4096))]
    pub reason: String,
    /// `Pause` waits for a person to resume the run (through the approvals API);
    /// `End` ends it as handed off.
    #[serde(default)]
    pub mode: HandoffMode,
}

/// What a handoff does to the run.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum HandoffMode {
    /// Pause until resumed.
    #[default]
    Pause,
    /// End the run.
    End,
}

/// End the run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndNode {
    /// The run's result; string values are templates. Default: the whole state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_any")]
    pub result: Option<Value>,
}

/// Observed state of a Workflow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Hash of the workflow as compiled; each run records the revision it started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Number of nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<u32>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: compiled into the bundle, or the compiler's diagnostic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
