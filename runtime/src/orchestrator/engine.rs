//! The engine: executes a run's nodes one at a time (a `parallel` node's children
//! concurrently) and hands every step to a [`Journal`] before it moves on, so a run can stop
//! at any point and continue from its last checkpoint on any replica.
//!
//! The engine does no I/O of its own. Nodes that talk to the outside world (`agent`, `llm`,
//! `tool`, `retrieve`) go through a [`NodeExecutor`]; `branch`, `transform`, `approval`,
//! `handoff`, `parallel` and `end` are evaluated here. That split is what the engine tests
//! exercise with fake executors, and what the overhead benchmark measures.

use std::future::Future;
use std::time::Duration;

use agentry_crds::workflow::{ApprovalDecision, HandoffMode, Node};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::expr::{self, ExprError, Scope};
use super::model::{Decision, Run, RunStatus, StepRecord, StepStatus, Wait, WaitKind};

/// Default first backoff between attempts of a node, doubled each retry.
const DEFAULT_BACKOFF_MS: u32 = 200;
/// Default wait of an approval.
const DEFAULT_APPROVAL_SECONDS: u32 = 86_400;

/// Work for the outside world, with its templates rendered.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Ask an agent (with its tools).
    Agent {
        /// Agent name.
        agent: String,
        /// The message.
        prompt: String,
    },
    /// One model call.
    Llm {
        /// Catalog model.
        model: String,
        /// System prompt.
        system: Option<String>,
        /// User prompt.
        prompt: String,
        /// Sampling temperature.
        temperature: Option<f64>,
        /// Most output tokens.
        max_tokens: Option<u32>,
    },
    /// Call a tool.
    Tool {
        /// Tool name.
        tool: String,
        /// Arguments.
        args: Value,
    },
    /// Search knowledge.
    Retrieve {
        /// Collection.
        collection: String,
        /// Query.
        query: String,
        /// Passages wanted.
        top_k: u32,
    },
}

impl Work {
    /// What the step record shows as the node's input.
    fn describe(&self) -> Value {
        match self {
            Work::Agent { agent, prompt } => json!({"agent": agent, "prompt": prompt}),
            Work::Llm {
                model,
                system,
                prompt,
                ..
            } => json!({"model": model, "system": system, "prompt": prompt}),
            Work::Tool { tool, args } => json!({"tool": tool, "args": args}),
            Work::Retrieve {
                collection,
                query,
                top_k,
            } => json!({"collection": collection, "query": query, "topK": top_k}),
        }
    }
}

/// One attempt of a node that does I/O.
#[derive(Clone, Debug)]
pub struct WorkCall {
    /// The run.
    pub run_id: Uuid,
    /// The node.
    pub node: String,
    /// Which entry into the node (1 for the first).
    pub visit: u32,
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// `<run>:<node>:<visit>`: the same for every attempt of one step and for the replay of
    /// a step after a crash, so a tool that honours `Idempotency-Key` applies it once.
    pub idempotency_key: String,
    /// The attempt must be over by then (the node's timeout or the run's deadline).
    pub deadline: DateTime<Utc>,
    /// What to do.
    pub work: Work,
}

/// Executes the nodes that do I/O. The error is a message for the step record.
pub trait NodeExecutor: Send + Sync {
    /// Runs one attempt.
    fn execute(&self, call: WorkCall) -> impl Future<Output = Result<Value, String>> + Send;
}

/// Where checkpoints go. A failed checkpoint stops the run where it is; whoever drives it
/// next continues from the last checkpoint that succeeded.
pub trait Journal: Send {
    /// Why a checkpoint failed.
    type Error: std::fmt::Display + Send;

    /// Persists `steps` and the run as it is after them, atomically.
    fn checkpoint(
        &mut self,
        run: &Run,
        steps: &[StepRecord],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Where a step sends the run.
#[derive(Clone, Debug, PartialEq)]
enum Transition {
    /// To a node, or (`None`) to the end.
    Goto(Option<String>),
    /// Pause.
    Wait(Wait),
    /// End the run.
    End {
        status: RunStatus,
        result: Option<Value>,
        error: Option<String>,
    },
}

/// A step's effect: its records, the state keys it writes and where it sends the run.
#[derive(Debug)]
struct Outcome {
    records: Vec<StepRecord>,
    writes: Vec<(String, Value)>,
    transition: Transition,
}

/// Drives `run` until it ends, pauses, or a checkpoint fails. The caller marks the run
/// `Running` (it holds its lease) before calling.
pub async fn drive<E: NodeExecutor, J: Journal>(
    run: &mut Run,
    executor: &E,
    journal: &mut J,
) -> Result<(), J::Error> {
    while run.status == RunStatus::Running {
        let now = Utc::now();
        let outcome = if now >= run.deadline {
            end_now(
                RunStatus::TimedOut,
                format!(
                    "the run's deadline ({} seconds) passed",
                    run.workflow.timeout_seconds
                ),
            )
        } else if let Some(wait) = run.cursor.wait.clone() {
            match resolve_wait(run, &wait, now) {
                Some(outcome) => outcome,
                None => {
                    // Claimed before anyone decided: park it again.
                    run.status = RunStatus::Waiting;
                    journal.checkpoint(run, &[]).await?;
                    return Ok(());
                }
            }
        } else {
            next_step(run, executor).await
        };
        apply(run, outcome.writes, outcome.transition);
        journal.checkpoint(run, &outcome.records).await?;
    }
    Ok(())
}

fn end_now(status: RunStatus, error: String) -> Outcome {
    Outcome {
        records: Vec::new(),
        writes: Vec::new(),
        transition: Transition::End {
            status,
            result: None,
            error: Some(error),
        },
    }
}

fn apply(run: &mut Run, writes: Vec<(String, Value)>, transition: Transition) {
    for (key, value) in writes {
        run.cursor.state.insert(key, value);
    }
    match transition {
        Transition::Goto(Some(next)) if next != agentry_crds::workflow::END => {
            run.cursor.next = Some(next);
        }
        Transition::Goto(Some(end)) if run.workflow.nodes.contains_key(&end) => {
            run.cursor.next = Some(end);
        }
        Transition::Goto(_) => {
            run.cursor.next = None;
            run.status = RunStatus::Succeeded;
            run.result = Some(Value::Object(run.cursor.state.clone()));
        }
        Transition::Wait(wait) => {
            run.cursor.wait = Some(wait);
            run.status = RunStatus::Waiting;
        }
        Transition::End {
            status,
            result,
            error,
        } => {
            run.cursor.next = None;
            run.cursor.wait = None;
            run.status = status;
            run.result = result;
            run.error = error;
        }
    }
}

fn run_value(run: &Run) -> Value {
    json!({"id": run.id, "workflow": run.workflow.name, "revision": run.workflow.revision})
}

fn scope<'a>(run: &'a Run, run_value: &'a Value) -> Scope<'a> {
    Scope {
        input: &run.input,
        state: &run.cursor.state,
        flags: &run.flags,
        run: run_value,
    }
}

/// The state key a node writes.
fn output_key(node: &Node) -> String {
    node.output.clone().unwrap_or_else(|| node.id.clone())
}

fn kind(node: &Node) -> &'static str {
    match node {
        n if n.agent.is_some() => "agent",
        n if n.llm.is_some() => "llm",
        n if n.tool.is_some() => "tool",
        n if n.retrieve.is_some() => "retrieve",
        n if n.branch.is_some() => "branch",
        n if n.parallel.is_some() => "parallel",
        n if n.transform.is_some() => "transform",
        n if n.approval.is_some() => "approval",
        n if n.handoff.is_some() => "handoff",
        n if n.end.is_some() => "end",
        _ => "unknown",
    }
}

/// A step record being filled in.
struct Step {
    seq: u32,
    node: String,
    kind: &'static str,
    visit: u32,
    parent: Option<u32>,
    started_at: DateTime<Utc>,
}

impl Step {
    fn start(node: &Node, seq: u32, visit: u32, parent: Option<u32>) -> Self {
        Self {
            seq,
            node: node.id.clone(),
            kind: kind(node),
            visit,
            parent,
            started_at: Utc::now(),
        }
    }

    fn finish(
        self,
        status: StepStatus,
        attempts: u32,
        input: Option<Value>,
        output: Option<Value>,
        error: Option<String>,
    ) -> StepRecord {
        StepRecord {
            seq: self.seq,
            node: self.node,
            kind: self.kind.to_owned(),
            visit: self.visit,
            parent: self.parent,
            status,
            attempts,
            input,
            output,
            error,
            started_at: self.started_at,
            finished_at: Utc::now(),
        }
    }
}

/// A failed step: its `onError` edge (the error written to its output key), else the run
/// fails with the step's error.
fn failed(node: &Node, record: StepRecord) -> Outcome {
    let error = record.error.clone().unwrap_or_default();
    match &node.on_error {
        Some(target) => Outcome {
            writes: vec![(output_key(node), json!({"error": error, "node": node.id}))],
            records: vec![record],
            transition: Transition::Goto(Some(target.clone())),
        },
        None => Outcome {
            records: vec![record],
            writes: Vec::new(),
            transition: Transition::End {
                status: RunStatus::Failed,
                result: None,
                error: Some(format!("node {:?} failed: {error}", node.id)),
            },
        },
    }
}

async fn next_step<E: NodeExecutor>(run: &mut Run, executor: &E) -> Outcome {
    let Some(id) = run.cursor.next.clone() else {
        return Outcome {
            records: Vec::new(),
            writes: Vec::new(),
            transition: Transition::Goto(None),
        };
    };
    let Some(node) = run.workflow.nodes.get(&id).cloned() else {
        return end_now(
            RunStatus::Failed,
            format!("node {id:?} is not in the workflow"),
        );
    };
    let max_steps = run.workflow.max_steps;
    let children = node.parallel.as_ref().map_or(0, |p| p.nodes.len());
    let needed = u32::try_from(children)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    if run.cursor.steps.saturating_add(needed) > max_steps {
        return end_now(
            RunStatus::Failed,
            format!("the run reached its step limit (maxSteps {max_steps}) before node {id:?}"),
        );
    }
    let visit = enter(run, &node);
    if let Some(limit) = node.max_visits
        && visit > limit
    {
        return end_now(
            RunStatus::Failed,
            format!("node {id:?} was entered more than its maxVisits ({limit}) times"),
        );
    }
    let seq = run.cursor.steps;
    let outcome = if let Some(parallel) = &node.parallel {
        let max = parallel.max_concurrency.map_or(children, |m| m as usize);
        parallel_step(
            run,
            executor,
            &node,
            &parallel.nodes,
            max.max(1),
            seq,
            visit,
        )
        .await
    } else {
        single_step(run, executor, &node, seq, visit, None).await
    };
    run.cursor.steps += u32::try_from(outcome.records.len()).unwrap_or(u32::MAX);
    outcome
}

/// Counts an entry into `node`; returns the visit number.
fn enter(run: &mut Run, node: &Node) -> u32 {
    let visits = run.cursor.visits.entry(node.id.clone()).or_insert(0);
    *visits += 1;
    *visits
}

async fn single_step<E: NodeExecutor>(
    run: &Run,
    executor: &E,
    node: &Node,
    seq: u32,
    visit: u32,
    parent: Option<u32>,
) -> Outcome {
    let step = Step::start(node, seq, visit, parent);
    let rv = run_value(run);
    let s = scope(run, &rv);
    let next = Transition::Goto(node.next.clone());
    if node.end.is_some() {
        return end_step(node, step, s);
    }
    if let Some(cases) = &node.branch {
        return branch_step(node, step, cases, s);
    }
    if let Some(transform) = &node.transform {
        return match transform_writes(transform, s) {
            Ok(writes) => Outcome {
                records: vec![step.finish(
                    StepStatus::Succeeded,
                    0,
                    None,
                    Some(Value::Object(writes.iter().cloned().collect())),
                    None,
                )],
                writes,
                transition: next,
            },
            Err(e) => failed(
                node,
                step.finish(StepStatus::Failed, 0, None, None, Some(e.0)),
            ),
        };
    }
    if let Some(approval) = &node.approval {
        return match expr::render(&approval.message, s) {
            Ok(message) => {
                let seconds = approval.timeout_seconds.unwrap_or(DEFAULT_APPROVAL_SECONDS);
                let until =
                    (Utc::now() + chrono::Duration::seconds(i64::from(seconds))).min(run.deadline);
                let record = step.finish(
                    StepStatus::Waiting,
                    0,
                    None,
                    Some(json!({"message": message, "until": until})),
                    None,
                );
                pause(record, node, WaitKind::Approval, message, until)
            }
            Err(e) => failed(
                node,
                step.finish(StepStatus::Failed, 0, None, None, Some(e.0)),
            ),
        };
    }
    if let Some(handoff) = &node.handoff {
        return match expr::render(&handoff.reason, s) {
            Ok(reason) => {
                let output = json!({"reason": reason, "mode": handoff.mode});
                match handoff.mode {
                    HandoffMode::End => Outcome {
                        records: vec![step.finish(
                            StepStatus::Succeeded,
                            0,
                            None,
                            Some(output.clone()),
                            None,
                        )],
                        writes: vec![(output_key(node), output.clone())],
                        transition: Transition::End {
                            status: RunStatus::HandedOff,
                            result: Some(output),
                            error: Some(reason),
                        },
                    },
                    HandoffMode::Pause => {
                        let record = step.finish(StepStatus::Waiting, 0, None, Some(output), None);
                        pause(record, node, WaitKind::Handoff, reason, run.deadline)
                    }
                }
            }
            Err(e) => failed(
                node,
                step.finish(StepStatus::Failed, 0, None, None, Some(e.0)),
            ),
        };
    }
    work_step(run, executor, node, step, s).await
}

fn pause(
    record: StepRecord,
    node: &Node,
    kind: WaitKind,
    message: String,
    until: DateTime<Utc>,
) -> Outcome {
    Outcome {
        records: vec![record],
        writes: Vec::new(),
        transition: Transition::Wait(Wait {
            node: node.id.clone(),
            kind,
            message,
            until,
        }),
    }
}

fn end_step(node: &Node, step: Step, s: Scope<'_>) -> Outcome {
    let result = match node.end.as_ref().and_then(|e| e.result.as_ref()) {
        Some(template) => expr::render_value(template, s),
        None => Ok(Value::Object(s.state.clone())),
    };
    match result {
        Ok(result) => Outcome {
            records: vec![step.finish(StepStatus::Succeeded, 0, None, Some(result.clone()), None)],
            writes: Vec::new(),
            transition: Transition::End {
                status: RunStatus::Succeeded,
                result: Some(result),
                error: None,
            },
        },
        Err(e) => failed(
            node,
            step.finish(StepStatus::Failed, 0, None, None, Some(e.0)),
        ),
    }
}

fn branch_step(
    node: &Node,
    step: Step,
    cases: &[agentry_crds::workflow::BranchCase],
    s: Scope<'_>,
) -> Outcome {
    for case in cases {
        match expr::eval_condition(&case.when, s) {
            Ok(true) => {
                return Outcome {
                    records: vec![step.finish(
                        StepStatus::Succeeded,
                        0,
                        Some(json!({"when": case.when})),
                        Some(json!({"next": case.next})),
                        None,
                    )],
                    writes: Vec::new(),
                    transition: Transition::Goto(Some(case.next.clone())),
                };
            }
            Ok(false) => {}
            Err(e) => {
                return failed(
                    node,
                    step.finish(
                        StepStatus::Failed,
                        0,
                        Some(json!({"when": case.when})),
                        None,
                        Some(e.0),
                    ),
                );
            }
        }
    }
    Outcome {
        records: vec![step.finish(
            StepStatus::Succeeded,
            0,
            None,
            Some(json!({"next": node.next})),
            None,
        )],
        writes: Vec::new(),
        transition: Transition::Goto(node.next.clone()),
    }
}

fn transform_writes(
    transform: &agentry_crds::workflow::TransformNode,
    s: Scope<'_>,
) -> Result<Vec<(String, Value)>, ExprError> {
    let mut writes = Vec::with_capacity(transform.cel.len() + transform.template.len());
    for (key, expr) in &transform.cel {
        writes.push((key.clone(), expr::eval_cel(expr, s)?));
    }
    for (key, template) in &transform.template {
        writes.push((key.clone(), Value::String(expr::render(template, s)?)));
    }
    Ok(writes)
}

fn render_work(node: &Node, s: Scope<'_>) -> Result<Work, ExprError> {
    if let Some(a) = &node.agent {
        return Ok(Work::Agent {
            agent: a.name.clone(),
            prompt: expr::render(&a.prompt, s)?,
        });
    }
    if let Some(l) = &node.llm {
        return Ok(Work::Llm {
            model: l.model.clone(),
            system: l
                .system
                .as_deref()
                .map(|t| expr::render(t, s))
                .transpose()?,
            prompt: expr::render(&l.prompt, s)?,
            temperature: l.temperature,
            max_tokens: l.max_tokens,
        });
    }
    if let Some(t) = &node.tool {
        let args: Map<String, Value> = t
            .args
            .iter()
            .map(|(k, v)| Ok((k.clone(), expr::render_value(v, s)?)))
            .collect::<Result<_, ExprError>>()?;
        return Ok(Work::Tool {
            tool: t.name.clone(),
            args: Value::Object(args),
        });
    }
    if let Some(r) = &node.retrieve {
        return Ok(Work::Retrieve {
            collection: r.collection.clone(),
            query: expr::render(&r.query, s)?,
            top_k: r.top_k.unwrap_or(5),
        });
    }
    Err(ExprError(format!(
        "node {:?} has no kind this engine can execute",
        node.id
    )))
}

/// An `agent`, `llm`, `tool` or `retrieve` node: attempts with timeout and backoff.
async fn work_step<E: NodeExecutor>(
    run: &Run,
    executor: &E,
    node: &Node,
    step: Step,
    s: Scope<'_>,
) -> Outcome {
    let work = match render_work(node, s) {
        Ok(w) => w,
        Err(e) => {
            return failed(
                node,
                step.finish(StepStatus::Failed, 0, None, None, Some(e.0)),
            );
        }
    };
    let input = Some(work.describe());
    let retries = node.retries.as_ref().map_or(0, |r| r.max);
    let backoff = node
        .retries
        .as_ref()
        .and_then(|r| r.backoff_ms)
        .unwrap_or(DEFAULT_BACKOFF_MS);
    let parse_json = node.llm.as_ref().is_some_and(|l| l.json);
    let key = format!("{}:{}:{}", run.id, node.id, step.visit);
    let mut attempt = 0u32;
    let error = loop {
        attempt += 1;
        let now = Utc::now();
        let deadline = node.timeout_seconds.map_or(run.deadline, |t| {
            (now + chrono::Duration::seconds(i64::from(t))).min(run.deadline)
        });
        let call = WorkCall {
            run_id: run.id,
            node: node.id.clone(),
            visit: step.visit,
            attempt,
            idempotency_key: key.clone(),
            deadline,
            work: work.clone(),
        };
        let budget = (deadline - now).to_std().unwrap_or(Duration::ZERO);
        let result = match tokio::time::timeout(budget, executor.execute(call)).await {
            Ok(Ok(value)) if parse_json => as_json(value),
            Ok(result) => result,
            Err(_) => Err(format!(
                "attempt {attempt} timed out after {} ms",
                budget.as_millis()
            )),
        };
        match result {
            Ok(value) => {
                return Outcome {
                    writes: vec![(output_key(node), value.clone())],
                    records: vec![step.finish(
                        StepStatus::Succeeded,
                        attempt,
                        input,
                        Some(value),
                        None,
                    )],
                    transition: Transition::Goto(node.next.clone()),
                };
            }
            Err(e) if attempt <= retries => {
                let factor = 1u64 << (attempt - 1).min(20);
                let pause = Duration::from_millis(u64::from(backoff).saturating_mul(factor));
                let left = (run.deadline - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                if pause >= left {
                    break format!("{e} (no time left before the run's deadline to retry)");
                }
                tracing::debug!(run = %run.id, node = %node.id, attempt, error = %e, "retrying step");
                tokio::time::sleep(pause).await;
            }
            Err(e) => break e,
        }
    };
    failed(
        node,
        step.finish(StepStatus::Failed, attempt, input, None, Some(error)),
    )
}

/// An `llm` node with `json: true`: the answer parsed as JSON (code fences tolerated).
fn as_json(value: Value) -> Result<Value, String> {
    let Value::String(text) = value else {
        return Ok(value);
    };
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .unwrap_or(trimmed)
        .trim();
    serde_json::from_str(body).map_err(|e| format!("the model's answer is not JSON ({e}): {text}"))
}

/// Kinds a `parallel` node may fan out to: work that ends without choosing where to go.
fn runs_in_parallel(node: &Node) -> bool {
    node.agent.is_some()
        || node.llm.is_some()
        || node.tool.is_some()
        || node.retrieve.is_some()
        || node.transform.is_some()
}

async fn parallel_step<E: NodeExecutor>(
    run: &mut Run,
    executor: &E,
    node: &Node,
    children: &[String],
    max_concurrency: usize,
    seq: u32,
    visit: u32,
) -> Outcome {
    let step = Step::start(node, seq, visit, None);
    let mut planned = Vec::with_capacity(children.len());
    for (i, id) in children.iter().enumerate() {
        let Some(child) = run.workflow.nodes.get(id).cloned() else {
            let error = format!("parallel child {id:?} is not in the workflow");
            return failed(
                node,
                step.finish(StepStatus::Failed, 0, None, None, Some(error)),
            );
        };
        if !runs_in_parallel(&child) {
            let error = format!(
                "parallel child {id:?} is a {} node; only agent, llm, tool, retrieve and transform nodes run in parallel",
                kind(&child)
            );
            return failed(
                node,
                step.finish(StepStatus::Failed, 0, None, None, Some(error)),
            );
        }
        let child_visit = enter(run, &child);
        let child_seq = seq + 1 + u32::try_from(i).unwrap_or(u32::MAX);
        planned.push((child, child_seq, child_visit));
    }
    let snapshot: &Run = run;
    // `buffered` keeps the declared order of the results, whatever order they finish in.
    // Futures built up front (not in a stream combinator's closure) keep them `Send` for
    // every lifetime the compiler asks about.
    let mut steps = Vec::with_capacity(planned.len());
    for (child, child_seq, child_visit) in &planned {
        steps.push(single_step(
            snapshot,
            executor,
            child,
            *child_seq,
            *child_visit,
            Some(seq),
        ));
    }
    let outcomes: Vec<Outcome> = futures::stream::iter(steps)
        .buffered(max_concurrency)
        .collect()
        .await;
    let mut records = Vec::with_capacity(outcomes.len() + 1);
    let mut writes = Vec::new();
    let mut failures = Vec::new();
    for outcome in outcomes {
        for record in &outcome.records {
            if record.status == StepStatus::Failed {
                failures.push(format!(
                    "{}: {}",
                    record.node,
                    record.error.as_deref().unwrap_or("failed")
                ));
            }
        }
        // A failed child's write is its error; only successful children write state.
        if outcome
            .records
            .iter()
            .all(|r| r.status != StepStatus::Failed)
        {
            writes.extend(outcome.writes);
        }
        records.extend(outcome.records);
    }
    let output = json!({"nodes": children});
    let record = if failures.is_empty() {
        step.finish(StepStatus::Succeeded, 0, None, Some(output), None)
    } else {
        step.finish(
            StepStatus::Failed,
            0,
            None,
            Some(output),
            Some(failures.join("; ")),
        )
    };
    records.insert(0, record);
    if failures.is_empty() {
        return Outcome {
            records,
            writes,
            transition: Transition::Goto(node.next.clone()),
        };
    }
    let mut outcome = failed(node, records.remove(0));
    outcome.records.extend(records);
    outcome.writes.splice(0..0, writes);
    outcome
}

/// A pause that was decided, or whose own timeout passed; `None` while it still waits.
fn resolve_wait(run: &mut Run, wait: &Wait, now: DateTime<Utc>) -> Option<Outcome> {
    let node = run.workflow.nodes.get(&wait.node).cloned();
    let decision = match run.cursor.decision.take() {
        Some(d) => d,
        None if now >= wait.until => {
            let approve = match (&wait.kind, node.as_ref().and_then(|n| n.approval.as_ref())) {
                (WaitKind::Approval, Some(a)) => a.on_timeout == Some(ApprovalDecision::Approve),
                _ => false,
            };
            Decision {
                approve,
                comment: Some("nobody decided before the wait timed out".to_owned()),
                approver: "timeout".to_owned(),
                decided_at: now,
            }
        }
        None => return None,
    };
    run.cursor.wait = None;
    let Some(node) = node else {
        return Some(end_now(
            RunStatus::Failed,
            format!("node {:?} is not in the workflow", wait.node),
        ));
    };
    let seq = run.cursor.steps;
    run.cursor.steps += 1;
    let visit = run.cursor.visits.get(&node.id).copied().unwrap_or(1);
    let step = Step::start(&node, seq, visit, None);
    let output = json!({"approved": decision.approve, "approver": decision.approver,
                        "comment": decision.comment, "decidedAt": decision.decided_at});
    let record = step.finish(StepStatus::Decided, 0, None, Some(output.clone()), None);
    let why = || {
        format!(
            "{} by {}{}",
            if decision.approver == "timeout" {
                "timed out"
            } else {
                "denied"
            },
            decision.approver,
            decision
                .comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )
    };
    let transition = match (wait.kind, decision.approve) {
        (_, true) => Transition::Goto(node.next.clone()),
        (WaitKind::Approval, false) => match node.approval.as_ref().and_then(|a| a.on_deny.clone())
        {
            Some(target) => Transition::Goto(Some(target)),
            None => Transition::End {
                status: RunStatus::Denied,
                result: None,
                error: Some(format!("approval at {:?} {}", node.id, why())),
            },
        },
        (WaitKind::Handoff, false) => Transition::End {
            status: RunStatus::HandedOff,
            result: None,
            error: Some(format!("handoff at {:?} ended: {}", node.id, why())),
        },
    };
    Some(Outcome {
        records: vec![record],
        writes: vec![(output_key(&node), output)],
        transition,
    })
}
