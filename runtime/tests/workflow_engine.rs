//! The workflow engine with fake node executors and an in-memory journal: every node kind,
//! `onError`, retries, timeouts, `maxSteps`, parallel joins, approvals and handoffs, a crash
//! between checkpoints, deterministic step order, and (property) termination of random graphs.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step fails the test"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentry_crds::bundle::CompiledWorkflow;
use agentry_runtime::orchestrator::{
    Decision, Journal, NodeExecutor, Run, RunStatus, StepRecord, StepStatus, WaitKind, Work,
    WorkCall, drive,
};
use chrono::Utc;
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// A workflow from `nodes` (a JSON array of CRD nodes).
fn workflow(start: &str, max_steps: u32, nodes: Value) -> CompiledWorkflow {
    let nodes: BTreeMap<String, Value> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n.clone()))
        .collect();
    serde_json::from_value(json!({
        "name": "test", "inputSchema": {"type": "object"}, "start": start,
        "maxSteps": max_steps, "timeoutSeconds": 3600, "nodes": nodes, "revision": "r1"
    }))
    .unwrap()
}

fn new_run(wf: CompiledWorkflow, input: Value) -> Run {
    let mut run = Run::new(
        Uuid::now_v7(),
        wf,
        input,
        json!({"tier": "gold"}),
        Utc::now(),
    );
    run.status = RunStatus::Running;
    run
}

/// Answers by tool name / agent / model; records every call; can fail, sleep, count.
#[derive(Default)]
struct Fake {
    answers: HashMap<String, Value>,
    /// Name → number of attempts that fail before one succeeds.
    failures: Mutex<HashMap<String, u32>>,
    /// Name → how long an attempt takes.
    delays: HashMap<String, Duration>,
    calls: Mutex<Vec<WorkCall>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Fake {
    fn answer(mut self, name: &str, value: Value) -> Self {
        self.answers.insert(name.to_owned(), value);
        self
    }
    fn failing(self, name: &str, times: u32) -> Self {
        self.failures.lock().insert(name.to_owned(), times);
        self
    }
    fn slow(mut self, name: &str, d: Duration) -> Self {
        self.delays.insert(name.to_owned(), d);
        self
    }
    fn calls_of(&self, name: &str) -> Vec<WorkCall> {
        self.calls
            .lock()
            .iter()
            .filter(|c| key(&c.work) == name)
            .cloned()
            .collect()
    }
}

fn key(work: &Work) -> &str {
    match work {
        Work::Tool { tool, .. } => tool,
        Work::Agent { agent, .. } => agent,
        Work::Llm { model, .. } => model,
        Work::Retrieve { collection, .. } => collection,
    }
}

impl NodeExecutor for Fake {
    async fn execute(&self, call: WorkCall) -> Result<Value, String> {
        self.calls.lock().push(call.clone());
        let name = key(&call.work).to_owned();
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        if let Some(d) = self.delays.get(&name) {
            tokio::time::sleep(*d).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        {
            let mut failures = self.failures.lock();
            if let Some(left) = failures.get_mut(&name)
                && *left > 0
            {
                *left -= 1;
                return Err(format!("{name} is down"));
            }
        }
        match (&call.work, self.answers.get(&name)) {
            (_, Some(v)) => Ok(v.clone()),
            (Work::Tool { args, .. }, None) => Ok(json!({"echo": args})),
            (Work::Agent { prompt, .. } | Work::Llm { prompt, .. }, None) => {
                Ok(Value::String(format!("answer to: {prompt}")))
            }
            (Work::Retrieve { .. }, None) => Err("no knowledge".into()),
        }
    }
}

/// Keeps every checkpoint; can be told to fail from the n-th on (a crash).
#[derive(Default)]
struct Memory {
    checkpoints: Vec<(Run, Vec<StepRecord>)>,
    fail_from: Option<usize>,
}

impl Journal for Memory {
    type Error = String;

    async fn checkpoint(&mut self, run: &Run, steps: &[StepRecord]) -> Result<(), String> {
        if self.fail_from.is_some_and(|n| self.checkpoints.len() >= n) {
            return Err("database went away".into());
        }
        self.checkpoints.push((run.clone(), steps.to_vec()));
        Ok(())
    }
}

impl Memory {
    fn steps(&self) -> Vec<StepRecord> {
        self.checkpoints
            .iter()
            .flat_map(|(_, s)| s.iter().cloned())
            .collect()
    }
    fn nodes(&self) -> Vec<(u32, String, StepStatus)> {
        self.steps()
            .into_iter()
            .map(|s| (s.seq, s.node, s.status))
            .collect()
    }
    fn last(&self) -> Run {
        self.checkpoints.last().unwrap().0.clone()
    }
}

async fn run_to_rest(run: &mut Run, fake: &Fake) -> Memory {
    let mut journal = Memory::default();
    drive(run, fake, &mut journal).await.unwrap();
    journal
}

fn refund() -> CompiledWorkflow {
    workflow(
        "lookup",
        20,
        json!([
            {"id": "lookup", "tool": {"name": "lookup-order", "args": {"orderId": "{{ input.orderId }}"}},
             "output": "order", "next": "check"},
            {"id": "check", "branch": [
                {"when": "state.order.total <= 100.0", "next": "refund"},
                {"when": "state.order.total > 100.0", "next": "approve"}]},
            {"id": "approve", "approval": {"message": "Refund {{ input.orderId }} for {{ state.order.total }}?"},
             "next": "refund"},
            {"id": "refund", "tool": {"name": "issue-refund", "args": {"orderId": "{{ input.orderId }}", "n": 1}},
             "output": "refund", "next": "note"},
            {"id": "note", "transform": {"cel": {"big": "state.order.total > 100.0"},
                                         "template": {"line": "refund {{ state.refund.id }}"}},
             "next": "done"},
            {"id": "done", "end": {"result": {"refundId": "{{ state.refund.id }}", "line": "{{ state.line }}"}}}
        ]),
    )
}

fn shop(total: f64) -> Fake {
    Fake::default()
        .answer("lookup-order", json!({"total": total}))
        .answer("issue-refund", json!({"id": "R-1"}))
}

#[tokio::test]
async fn tool_branch_transform_and_end_run_in_order() {
    let fake = shop(42.5);
    let mut run = new_run(refund(), json!({"orderId": "A-1"}));
    let journal = run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        run.result,
        Some(json!({"refundId": "R-1", "line": "refund R-1"}))
    );
    assert_eq!(
        journal.nodes(),
        vec![
            (0, "lookup".into(), StepStatus::Succeeded),
            (1, "check".into(), StepStatus::Succeeded),
            (2, "refund".into(), StepStatus::Succeeded),
            (3, "note".into(), StepStatus::Succeeded),
            (4, "done".into(), StepStatus::Succeeded),
        ]
    );
    assert_eq!(run.cursor.state["big"], json!(false));
    let refund = fake.calls_of("issue-refund");
    assert_eq!(refund.len(), 1);
    assert_eq!(
        refund[0].work,
        Work::Tool {
            tool: "issue-refund".into(),
            args: json!({"orderId": "A-1", "n": 1})
        },
        "string arguments are templates, others pass as written"
    );
    assert_eq!(refund[0].idempotency_key, format!("{}:refund:1", run.id));
}

#[tokio::test]
async fn an_approval_pauses_and_a_decision_resumes_or_ends_the_run() {
    for (approve, status, refunds) in [
        (true, RunStatus::Succeeded, 1),
        (false, RunStatus::Denied, 0),
    ] {
        let fake = shop(250.0);
        let mut run = new_run(refund(), json!({"orderId": "B-2"}));
        let journal = run_to_rest(&mut run, &fake).await;
        assert_eq!(run.status, RunStatus::Waiting);
        let wait = run.cursor.wait.clone().unwrap();
        assert_eq!(wait.kind, WaitKind::Approval);
        assert_eq!(wait.message, "Refund B-2 for 250.0?");
        assert_eq!(journal.steps().last().unwrap().status, StepStatus::Waiting);
        // A claim without a decision parks the run again without a step.
        run.status = RunStatus::Running;
        let parked = run_to_rest(&mut run, &fake).await;
        assert_eq!(run.status, RunStatus::Waiting);
        assert!(parked.steps().is_empty());

        run.cursor.decision = Some(Decision {
            approve,
            comment: Some("checked".into()),
            approver: "alice".into(),
            decided_at: Utc::now(),
        });
        run.status = RunStatus::Running;
        let resumed = run_to_rest(&mut run, &fake).await;
        assert_eq!(run.status, status);
        assert_eq!(fake.calls_of("issue-refund").len(), refunds);
        let decided = &resumed.steps()[0];
        assert_eq!(
            (decided.node.as_str(), decided.status),
            ("approve", StepStatus::Decided)
        );
        assert_eq!(decided.output.as_ref().unwrap()["approver"], "alice");
        if !approve {
            assert!(run.error.as_deref().unwrap().contains("denied by alice"));
        }
    }
}

#[tokio::test]
async fn approval_timeouts_apply_on_timeout_and_on_deny() {
    let wf = workflow(
        "ask",
        10,
        json!([
            {"id": "ask", "approval": {"message": "ok?", "onTimeout": "Approve"}, "next": "yes"},
            {"id": "yes", "end": {"result": "approved"}},
            {"id": "ask2", "approval": {"message": "ok?", "onDeny": "no"}, "next": "yes"},
            {"id": "no", "end": {"result": "refused"}}
        ]),
    );
    let fake = Fake::default();
    let mut run = new_run(wf.clone(), json!({}));
    run_to_rest(&mut run, &fake).await;
    run.cursor.wait.as_mut().unwrap().until = Utc::now() - chrono::Duration::seconds(1);
    run.status = RunStatus::Running;
    run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.result, Some(json!("approved")));

    let mut wf2 = wf;
    wf2.start = "ask2".into();
    let mut run = new_run(wf2, json!({}));
    run_to_rest(&mut run, &fake).await;
    run.cursor.wait.as_mut().unwrap().until = Utc::now() - chrono::Duration::seconds(1);
    run.status = RunStatus::Running;
    run_to_rest(&mut run, &fake).await;
    assert_eq!(
        run.result,
        Some(json!("refused")),
        "timeout defaults to Deny → onDeny"
    );
}

#[tokio::test]
async fn handoffs_end_or_pause_the_run() {
    let wf = workflow(
        "h",
        10,
        json!([
            {"id": "h", "handoff": {"reason": "help {{ input.who }}", "mode": "End"}},
            {"id": "p", "handoff": {"reason": "look", "mode": "Pause"}, "next": "done"},
            {"id": "done", "end": {}}
        ]),
    );
    let fake = Fake::default();
    let mut run = new_run(wf.clone(), json!({"who": "bob"}));
    run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::HandedOff);
    assert_eq!(run.error.as_deref(), Some("help bob"));

    let mut paused = wf;
    paused.start = "p".into();
    let mut run = new_run(paused, json!({}));
    run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.cursor.wait.as_ref().unwrap().kind, WaitKind::Handoff);
    run.cursor.decision = Some(Decision {
        approve: true,
        comment: None,
        approver: "agent-7".into(),
        decided_at: Utc::now(),
    });
    run.status = RunStatus::Running;
    run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_and_reuse_the_idempotency_key() {
    let wf = workflow(
        "call",
        10,
        json!([
            {"id": "call", "tool": {"name": "flaky"}, "retries": {"max": 2, "backoffMs": 100}, "next": "end"}
        ]),
    );
    let fake = Fake::default().failing("flaky", 2);
    let mut run = new_run(wf.clone(), json!({}));
    let started = tokio::time::Instant::now();
    let journal = run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(journal.steps()[0].attempts, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "100 + 200 ms of backoff"
    );
    let calls = fake.calls_of("flaky");
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        calls
            .iter()
            .all(|c| c.idempotency_key == calls[0].idempotency_key)
    );

    let fake = Fake::default().failing("flaky", 3);
    let mut run = new_run(wf, json!({}));
    let journal = run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Failed);
    let step = &journal.steps()[0];
    assert_eq!((step.status, step.attempts), (StepStatus::Failed, 3));
    assert!(run.error.as_deref().unwrap().contains("flaky is down"));
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_and_on_error_takes_over() {
    let wf = workflow(
        "call",
        10,
        json!([
            {"id": "call", "tool": {"name": "slow"}, "timeoutSeconds": 1, "onError": "fallback",
             "output": "result", "next": "end"},
            {"id": "fallback", "transform": {"cel": {"recovered": "has(state.result.error)"}}, "next": "end"}
        ]),
    );
    let fake = Fake::default().slow("slow", Duration::from_secs(30));
    let mut run = new_run(wf, json!({}));
    let journal = run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let first = &journal.steps()[0];
    assert_eq!(first.status, StepStatus::Failed);
    assert!(
        first.error.as_deref().unwrap().contains("timed out"),
        "{first:?}"
    );
    assert_eq!(run.cursor.state["recovered"], json!(true));
    assert_eq!(run.cursor.state["result"]["node"], json!("call"));
}

#[tokio::test]
async fn cel_and_template_errors_fail_the_step_with_the_expression() {
    let wf = workflow(
        "check",
        10,
        json!([
            {"id": "check", "branch": [{"when": "state.missing.total > 1.0", "next": "end"}]},
        ]),
    );
    let mut run = new_run(wf, json!({}));
    let journal = run_to_rest(&mut run, &Fake::default()).await;
    assert_eq!(run.status, RunStatus::Failed);
    let step = &journal.steps()[0];
    assert_eq!(step.status, StepStatus::Failed);
    assert!(
        step.error
            .as_deref()
            .unwrap()
            .contains("state.missing.total > 1.0")
    );

    let wf = workflow(
        "say",
        10,
        json!([{"id": "say", "llm": {"model": "m", "prompt": "{{ state.nope }}"}, "next": "end"}]),
    );
    let fake = Fake::default();
    let mut run = new_run(wf, json!({}));
    let journal = run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        journal.steps()[0]
            .error
            .as_deref()
            .unwrap()
            .contains("template")
    );
    assert!(
        fake.calls.lock().is_empty(),
        "nothing is called with a broken prompt"
    );
}

#[tokio::test]
async fn parallel_children_join_in_declared_order_within_the_bound() {
    let wf = workflow(
        "fan",
        20,
        json!([
            {"id": "fan", "parallel": {"nodes": ["a", "b", "c", "d"], "maxConcurrency": 2}, "next": "sum"},
            {"id": "a", "tool": {"name": "ta"}},
            {"id": "b", "agent": {"name": "tb", "prompt": "hi"}},
            {"id": "c", "llm": {"model": "tc", "prompt": "{{ input.q }}"}},
            {"id": "d", "transform": {"cel": {"dd": "1 + 1"}}},
            {"id": "sum", "end": {}}
        ]),
    );
    let fake = Fake::default()
        .slow("ta", Duration::from_millis(60))
        .slow("tb", Duration::from_millis(30))
        .slow("tc", Duration::from_millis(1));
    let mut run = new_run(wf, json!({"q": "why"}));
    let journal = run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        journal
            .steps()
            .iter()
            .map(|s| (s.seq, s.node.as_str(), s.parent))
            .collect::<Vec<_>>(),
        [
            (0, "fan", None),
            (1, "a", Some(0)),
            (2, "b", Some(0)),
            (3, "c", Some(0)),
            (4, "d", Some(0)),
            (5, "sum", None)
        ]
    );
    assert!(fake.most_running.load(Ordering::SeqCst) <= 2);
    let state = &run.cursor.state;
    assert_eq!(state["c"], json!("answer to: why"));
    assert_eq!(state["dd"], json!(2));
    assert!(state.contains_key("a") && state.contains_key("b"));
}

#[tokio::test]
async fn a_failed_parallel_child_fails_the_join() {
    let wf = workflow(
        "fan",
        20,
        json!([
            {"id": "fan", "parallel": {"nodes": ["a", "b"]}, "next": "end", "onError": "recover"},
            {"id": "a", "tool": {"name": "ta"}},
            {"id": "b", "tool": {"name": "tb"}},
            {"id": "recover", "end": {"result": "{{ state.fan.error }}"}}
        ]),
    );
    let fake = Fake::default().failing("tb", 5);
    let mut run = new_run(wf, json!({}));
    run_to_rest(&mut run, &fake).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(
        run.result
            .unwrap()
            .as_str()
            .unwrap()
            .contains("b: tb is down")
    );
    assert!(
        run.cursor.state.contains_key("a"),
        "successful children still write"
    );
}

#[tokio::test]
async fn max_steps_and_max_visits_bound_a_cycle() {
    let looping = json!([
        {"id": "spin", "transform": {"cel": {"n": "has(state.n) ? state.n + 1 : 1"}}, "next": "spin", "maxVisits": 100}
    ]);
    let mut run = new_run(workflow("spin", 5, looping.clone()), json!({}));
    let journal = run_to_rest(&mut run, &Fake::default()).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(journal.steps().len(), 5);
    assert!(run.error.as_deref().unwrap().contains("maxSteps 5"));

    let mut bounded = looping;
    bounded[0]["maxVisits"] = json!(3);
    let mut run = new_run(workflow("spin", 50, bounded), json!({}));
    let journal = run_to_rest(&mut run, &Fake::default()).await;
    assert_eq!(journal.steps().len(), 3);
    assert!(run.error.as_deref().unwrap().contains("maxVisits (3)"));
    assert_eq!(run.cursor.state["n"], json!(3));
}

#[tokio::test]
async fn a_passed_deadline_times_the_run_out() {
    let mut run = new_run(refund(), json!({"orderId": "A-1"}));
    run.deadline = Utc::now() - chrono::Duration::seconds(1);
    let journal = run_to_rest(&mut run, &shop(1.0)).await;
    assert_eq!(run.status, RunStatus::TimedOut);
    assert!(journal.steps().is_empty());
}

#[tokio::test]
async fn after_a_crash_the_run_continues_from_its_last_checkpoint() {
    let fake = shop(42.5);
    let mut run = new_run(refund(), json!({"orderId": "A-1"}));
    // The third checkpoint (after "refund") never lands: the process died.
    let mut crashed = Memory {
        fail_from: Some(2),
        ..Memory::default()
    };
    assert!(drive(&mut run, &fake, &mut crashed).await.is_err());
    let mut resumed = crashed.last();
    assert_eq!(resumed.cursor.next.as_deref(), Some("refund"));
    resumed.status = RunStatus::Running;
    let journal = run_to_rest(&mut resumed, &fake).await;
    assert_eq!(resumed.status, RunStatus::Succeeded);
    assert_eq!(journal.steps()[0].seq, 2, "numbering continues");
    let refunds = fake.calls_of("issue-refund");
    assert_eq!(refunds.len(), 2, "the step ran again after the crash...");
    assert_eq!(
        refunds[0].idempotency_key, refunds[1].idempotency_key,
        "...with the same idempotency key, so the tool applies it once"
    );
}

#[tokio::test]
async fn the_same_run_takes_the_same_steps() {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut run = new_run(refund(), json!({"orderId": "A-1"}));
        run.id = Uuid::nil();
        let journal = run_to_rest(&mut run, &shop(10.0)).await;
        let steps: Vec<Value> = journal
            .steps()
            .into_iter()
            .map(|s| json!([s.seq, s.node, s.status, s.input, s.output]))
            .collect();
        seen.push((steps, run.result));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]));
}

/// A node of a random graph: a transform or a branch to random targets.
#[derive(Clone, Debug)]
enum Gen {
    Transform {
        next: usize,
        max_visits: Option<u32>,
    },
    Branch {
        when: Vec<(bool, usize)>,
        next: usize,
    },
    Tool {
        next: usize,
        fail: bool,
        on_error: usize,
    },
}

fn gen_graph() -> impl Strategy<Value = (Vec<Gen>, u32)> {
    (1usize..12).prop_flat_map(|n| {
        // Targets range over the nodes and one past them (the end).
        let target = 0..=n;
        let node = prop_oneof![
            (target.clone(), proptest::option::of(1u32..5))
                .prop_map(|(next, max_visits)| Gen::Transform { next, max_visits }),
            (
                proptest::collection::vec((any::<bool>(), target.clone()), 1..3),
                target.clone()
            )
                .prop_map(|(when, next)| Gen::Branch { when, next }),
            (target.clone(), any::<bool>(), target.clone()).prop_map(|(next, fail, on_error)| {
                Gen::Tool {
                    next,
                    fail,
                    on_error,
                }
            }),
        ];
        (proptest::collection::vec(node, n), 1u32..60)
    })
}

fn build(graph: &[Gen], max_steps: u32) -> CompiledWorkflow {
    let id = |i: usize| {
        if i >= graph.len() {
            "end".to_owned()
        } else {
            format!("n{i}")
        }
    };
    let nodes: Vec<Value> = graph
        .iter()
        .enumerate()
        .map(|(i, g)| match g {
            Gen::Transform { next, max_visits } => json!({"id": id(i),
                "transform": {"cel": {"v": "1"}}, "next": id(*next), "maxVisits": max_visits}),
            Gen::Branch { when, next } => json!({"id": id(i),
                "branch": when.iter().map(|(b, t)| json!({"when": b.to_string(), "next": id(*t)})).collect::<Vec<_>>(),
                "next": id(*next)}),
            Gen::Tool { next, fail, on_error } => json!({"id": id(i),
                "tool": {"name": if *fail { "broken" } else { "fine" }},
                "next": id(*next), "onError": id(*on_error)}),
        })
        .collect();
    workflow("n0", max_steps, Value::Array(nodes))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the graph (cycles included), a run ends within maxSteps and never panics.
    #[test]
    fn random_graphs_terminate_within_max_steps((graph, max_steps) in gen_graph()) {
        let wf = build(&graph, max_steps);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fake = Arc::new(Fake::default().failing("broken", u32::MAX));
        let (run, journal) = runtime.block_on(async {
            let mut run = new_run(wf, json!({}));
            let mut journal = Memory::default();
            drive(&mut run, fake.as_ref(), &mut journal).await.unwrap();
            (run, journal)
        });
        prop_assert!(run.status.is_terminal(), "{:?}", run.status);
        let steps = journal.steps();
        prop_assert!(steps.len() as u32 <= max_steps);
        prop_assert_eq!(run.cursor.steps as usize, steps.len());
        let seqs: Vec<u32> = steps.iter().map(|s| s.seq).collect();
        prop_assert_eq!(seqs, (0..steps.len() as u32).collect::<Vec<_>>());
    }
}
