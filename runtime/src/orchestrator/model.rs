//! What a run is made of: its status, its cursor (the checkpointed position) and the records
//! of the steps it executed. Everything here is plain data, serialized into
//! `agentry.workflow_runs` and `agentry.workflow_steps`.

use std::collections::BTreeMap;

use agentry_crds::bundle::CompiledWorkflow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created or resumed; waiting for a replica to drive it.
    Pending,
    /// A replica holds its lease and is executing it.
    Running,
    /// Paused at an approval or a handoff.
    Waiting,
    /// Reached an `end` node (or ran out of `next`).
    Succeeded,
    /// A step failed without an `onError` edge, or a run limit was hit.
    Failed,
    /// An approval was denied and the node has no `onDeny`.
    Denied,
    /// Ended by a handoff to a person.
    HandedOff,
    /// Cancelled through the API.
    Cancelled,
    /// Its deadline passed.
    TimedOut,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Denied,
        RunStatus::HandedOff,
        RunStatus::Cancelled,
        RunStatus::TimedOut,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Denied => "denied",
            RunStatus::HandedOff => "handed_off",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The run will never execute another step.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunStatus::Pending | RunStatus::Running | RunStatus::Waiting
        )
    }
}

/// What a paused run waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// A person approves or denies (`approval` node).
    Approval,
    /// A person resumes the run after a handoff (`handoff` node with mode `Pause`).
    Handoff,
}

/// A pause: which node, why, and until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wait {
    /// The node that paused.
    pub node: String,
    /// Why.
    pub kind: WaitKind,
    /// The rendered question or reason.
    pub message: String,
    /// When the wait's own timeout applies (the run's deadline bounds it too).
    pub until: DateTime<Utc>,
}

/// A person's answer to a [`Wait`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Approve (continue) or deny.
    pub approve: bool,
    /// Why.
    pub comment: Option<String>,
    /// Who decided (`timeout` when nobody did in time).
    pub approver: String,
    /// When.
    pub decided_at: DateTime<Utc>,
}

/// The checkpointed position of a run: enough to continue it on any replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// Node to execute next; `None` once the run ended.
    pub next: Option<String>,
    /// Node outputs and transform values, by state key.
    pub state: Map<String, Value>,
    /// Times each node was entered.
    pub visits: BTreeMap<String, u32>,
    /// Steps executed so far (also the sequence number of the next step).
    pub steps: u32,
    /// The pause the run is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// The decision on `wait`, set by the approvals API, consumed by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// A run as the engine drives it.
#[derive(Clone, Debug)]
pub struct Run {
    /// Run id.
    pub id: Uuid,
    /// The workflow as it was when the run started.
    pub workflow: CompiledWorkflow,
    /// The validated input.
    pub input: Value,
    /// Flag values evaluated when the run started (`flags.<key>` in expressions).
    pub flags: Value,
    /// Status.
    pub status: RunStatus,
    /// Position.
    pub cursor: Cursor,
    /// The `end` node's result.
    pub result: Option<Value>,
    /// Why the run failed, was denied, handed off, timed out or cancelled.
    pub error: Option<String>,
    /// The run's deadline (`limits.timeoutSeconds` after it was created).
    pub deadline: DateTime<Utc>,
}

impl Run {
    /// A new run at the workflow's start node.
    pub fn new(
        id: Uuid,
        workflow: CompiledWorkflow,
        input: Value,
        flags: Value,
        now: DateTime<Utc>,
    ) -> Self {
        let deadline = now + chrono::Duration::seconds(i64::from(workflow.timeout_seconds));
        let cursor = Cursor {
            next: Some(workflow.start.clone()),
            ..Cursor::default()
        };
        Self {
            id,
            workflow,
            input,
            flags,
            status: RunStatus::Pending,
            cursor,
            result: None,
            error: None,
            deadline,
        }
    }
}

/// How one step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Done; its output was written to the state.
    Succeeded,
    /// Failed after its retries (the error says why).
    Failed,
    /// Paused the run (approval or handoff).
    Waiting,
    /// A pause was decided (approved, denied or timed out).
    Decided,
}

impl StepStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Waiting => "waiting",
            StepStatus::Decided => "decided",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Waiting,
            StepStatus::Decided,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// One executed node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Position in the run: steps are numbered in execution order; the children of a
    /// `parallel` node follow it in declared order, whatever order they finished in.
    pub seq: u32,
    /// Node id.
    pub node: String,
    /// Node kind (`tool`, `branch`, ...).
    pub kind: String,
    /// Which entry into the node this was (1 for the first).
    pub visit: u32,
    /// The `parallel` step this step ran under.
    pub parent: Option<u32>,
    /// How it ended.
    pub status: StepStatus,
    /// Attempts made (retries included); 0 for nodes that do no I/O.
    pub attempts: u32,
    /// What the node was given: rendered prompt or arguments, or the condition that held.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// What it produced.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Why it failed (with the expression, for CEL and template errors).
    pub error: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
}
