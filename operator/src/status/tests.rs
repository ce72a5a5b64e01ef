use agentry_crds::conditions::{find, is_true};

use super::*;
use crate::fixtures::{at, compile_with, objects, tenant};

fn observation() -> Observation {
    Observation {
        generation: Some(4),
        suspended: false,
        namespace: "tenant-acme".to_owned(),
        endpoint: Some("http://agentry-runtime.tenant-acme.svc".to_owned()),
        namespace_ready: Check::ok(reasons::RECONCILED, "namespace tenant-acme is provisioned"),
        database_ready: Check::ok(reasons::RECONCILED, "role agentry_tenant_acme"),
        bundle_ready: Check::ok(reasons::COMPILED, "bundle published"),
        runtime_ready: Check::ok(reasons::RECONCILED, "1 of 1 replicas available"),
        bundle_hash: Some("abc".to_owned()),
        counts: Some(BundleCounts::default()),
    }
}

#[test]
fn a_converged_tenant_computes_the_status_it_already_has() {
    let first = tenant_status(None, &observation(), at(10));
    assert_eq!(first.phase, Some(TenantPhase::Ready));
    assert!(is_true(&first.conditions, types::READY));
    for t in [
        types::NAMESPACE_READY,
        types::DATABASE_READY,
        types::BUNDLE_READY,
        types::RUNTIME_READY,
    ] {
        let c = find(&first.conditions, t).unwrap();
        assert_eq!(c.status, "True", "{t}");
        assert_eq!(c.observed_generation, Some(4));
    }
    let again = tenant_status(Some(&first), &observation(), at(99));
    assert_eq!(again, first, "time moved on but nothing changed");
}

#[test]
fn a_failing_part_names_itself_in_ready_and_moves_the_transition_time() {
    let first = tenant_status(None, &observation(), at(10));
    let mut obs = observation();
    obs.database_ready = Check::fail(reasons::ERROR, "database: connection refused");
    let next = tenant_status(Some(&first), &obs, at(20));
    let ready = find(&next.conditions, types::READY).unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, reasons::ERROR);
    assert_eq!(ready.message, "DatabaseReady: database: connection refused");
    assert_eq!(ready.last_transition_time, at(20));
    let ns = find(&next.conditions, types::NAMESPACE_READY).unwrap();
    assert_eq!(ns.last_transition_time, at(10));
    // The runtime still serves: degraded, not provisioning.
    assert_eq!(next.phase, Some(TenantPhase::Degraded));
}

#[test]
fn phases_follow_the_parts() {
    let mut obs = observation();
    obs.runtime_ready = Check::fail(reasons::PROGRESSING, "0 of 1 replicas available");
    assert_eq!(
        tenant_status(None, &obs, at(1)).phase,
        Some(TenantPhase::Provisioning)
    );
    obs.namespace_ready = Check::fail(reasons::INVALID, "namespace taken");
    assert_eq!(
        tenant_status(None, &obs, at(1)).phase,
        Some(TenantPhase::Pending)
    );
    let mut suspended = observation();
    suspended.suspended = true;
    let s = tenant_status(None, &suspended, at(1));
    assert_eq!(s.phase, Some(TenantPhase::Suspended));
    let ready = find(&s.conditions, types::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::SUSPENDED)
    );
    let t = terminating(Some(&s));
    assert_eq!(t.phase, Some(TenantPhase::Terminating));
    assert_eq!(t.conditions, s.conditions);
}

#[test]
fn counts_count_compiled_and_left_out_objects() {
    let c = compile_with(&tenant(), &objects(true));
    let n = counts(&c);
    assert_eq!(
        (n.agents, n.tools, n.workflows, n.flags, n.invalid),
        (1, 1, 1, 1, 1)
    );
}

#[test]
fn valid_objects_are_ready_with_their_revision() {
    let objects = objects(true);
    let c = compile_with(&tenant(), &objects);
    let agent = objects
        .agents
        .iter()
        .find(|a| a.name_any() == "triage")
        .unwrap();
    let s = agent_status(agent, &c, at(5));
    assert_eq!(s.model.as_deref(), Some("small"));
    assert_eq!(
        s.revision.as_deref(),
        Some(c.bundle.agents["triage"].revision.as_str())
    );
    assert_eq!(s.observed_generation, Some(2));
    let ready = find(&s.conditions, types::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reasons::COMPILED)
    );

    let tool = tool_status(&objects.tools[0], &c, &[], at(5));
    assert!(is_true(&tool.conditions, types::READY));
    let wf = workflow_status(&objects.workflows[0], &c, at(5));
    assert_eq!(wf.node_count, Some(2));
    assert!(is_true(&wf.conditions, types::READY));
    let flag = flag_status(&objects.flags[0], &c, at(5));
    assert_eq!(flag.flag_count, Some(1));
    assert_eq!(flag.revision.as_ref().map(String::len), Some(16));
    assert!(is_true(&flag.conditions, types::READY));
}

#[test]
fn a_tool_missing_its_secret_is_not_ready_and_names_secret_and_key() {
    let objects = objects(false);
    let c = compile_with(&tenant(), &objects);
    let missing = [
        "header Authorization: Secret tenant-acme/acme-api (key \"token\") not found".to_owned(),
    ];
    let tool = tool_status(&objects.tools[0], &c, &missing, at(5));
    let ready = find(&tool.conditions, types::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::WAITING)
    );
    assert_eq!(
        ready.message,
        "compiled, but its calls fail until the Secret exists: header Authorization: Secret tenant-acme/acme-api (key \"token\") not found"
    );
    assert!(tool.revision.is_some(), "the tool is still in the bundle");
}

#[test]
fn an_invalid_agent_says_why_and_the_rest_still_compiles() {
    let objects = objects(true);
    let c = compile_with(&tenant(), &objects);
    let broken = objects
        .agents
        .iter()
        .find(|a| a.name_any() == "broken")
        .unwrap();
    let s = agent_status(broken, &c, at(5));
    let ready = find(&s.conditions, types::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::INVALID)
    );
    assert!(
        ready.message.contains("gpt-nonexistent"),
        "{}",
        ready.message
    );
    assert!(ready.message.starts_with("spec.model"), "{}", ready.message);
    assert_eq!(s.revision, None);
    assert_eq!(s.observed_generation, Some(3));
    assert!(c.bundle.agents.contains_key("triage"));
}

#[test]
fn an_unchanged_object_status_keeps_its_transition_time() {
    let objects = objects(false);
    let c = compile_with(&tenant(), &objects);
    let mut agent = objects.agents[0].clone();
    agent.status = Some(agent_status(&agent, &c, at(5)));
    let again = agent_status(&agent, &c, at(500));
    assert_eq!(Some(again), agent.status);
}
