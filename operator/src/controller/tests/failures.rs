//! What the controller does when the API server or the database fails, or the Tenant cannot
//! be reconciled as written: errors are returned, statuses name the problem, retries back off.

use std::sync::Arc;

use agentry_crds::conditions::{reasons, types};
use agentry_crds::tenant::TenantPhase;
use kube::runtime::controller::Action;
use serde_json::json;

use super::world::*;
use super::*;
use crate::controller::{BACKOFF_BASE, error_policy, reconcile};
use crate::fixtures::{at, objects};
use crate::settings::tests::settings;

#[tokio::test]
async fn a_failing_database_keeps_the_finalizer() {
    let fake = Arc::new(FakeProvisioner {
        fail: true,
        ..FakeProvisioner::default()
    });
    let (ctx, handle) = context(settings(), fake.clone(), at(6_000));
    let mut scenario = deletion_scenario();
    scenario.truncate(2);
    scenario.push(event());
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(deleted_tenant()), ctx.clone()),
    )
    .await;
    let error = result.unwrap_err();
    assert!(
        error.to_string().contains("provisioning the database"),
        "{error}"
    );
    assert_eq!(calls[2].body["reason"], "ReconcileFailed");
    assert_eq!(
        error_policy(Arc::new(deleted_tenant()), &error, ctx),
        Action::requeue(BACKOFF_BASE)
    );
}

#[tokio::test]
async fn a_namespace_of_another_tenant_is_invalid_and_waits_for_a_change() {
    let fake = Arc::new(FakeProvisioner::default());
    let (ctx, handle) = context(settings(), fake.clone(), at(1_000));
    let taken = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"agentry.dev/tenant": "globex"}}});
    let tenant = serde_json::to_value(live_tenant()).unwrap();
    let scenario = vec![
        get(format!("/api/v1/namespaces/{NS}"), Reply::Json(200, taken)),
        list(crd_list("agents"), "Agent", vec![]),
        list(crd_list("tools"), "Tool", vec![]),
        list(crd_list("workflows"), "Workflow", vec![]),
        list(crd_list("featureflags"), "FeatureFlag", vec![]),
        get(core("secrets", "agentry-runtime-credentials"), not_found()),
        apply(format!("{TENANT_PATH}/status")).reply(Reply::Echo {
            base: tenant,
            extra: json!({}),
        }),
        event(),
    ];
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(live_tenant()), ctx.clone()),
    )
    .await;
    let error = result.unwrap_err();
    assert!(error.is_invalid());
    assert!(fake.calls().is_empty());
    let status = status_of(&calls);
    assert_eq!(status.phase, Some(TenantPhase::Pending));
    let ns = condition(&status, types::NAMESPACE_READY);
    assert_eq!(
        (ns.status.as_str(), ns.reason.as_str()),
        ("False", reasons::INVALID)
    );
    assert!(
        ns.message.contains("belongs to Tenant globex"),
        "{}",
        ns.message
    );
    assert_eq!(calls[7].body["reason"], reasons::INVALID);
    assert_eq!(calls[7].body["type"], "Warning");
    assert_eq!(
        error_policy(Arc::new(live_tenant()), &error, ctx),
        Action::await_change()
    );
}

/// The API server fails call `at` of a new tenant's reconcile with `code`; the reconcile
/// stops there, says so in the status and an Event, and retries with growing backoff.
async fn failing_call(at_call: usize, code: u16, reason: &str, condition_type: &str) {
    let fake = Arc::new(FakeProvisioner::default());
    let world = World::new(live_tenant(), objects(false));
    let mut scenario = apply_scenario(&world, &new_tenant_writes());
    let failing_path = scenario[at_call].path.clone();
    scenario.truncate(at_call + 1);
    scenario[at_call].reply = Reply::status(code, reason);
    let tenant = serde_json::to_value(&world.tenant).unwrap();
    scenario.push(apply(format!("{TENANT_PATH}/status")).reply(Reply::Echo {
        base: tenant,
        extra: json!({}),
    }));
    scenario.push(event());
    let (ctx, handle) = context(settings(), fake, crate::fixtures::at(1_000));
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(world.tenant.clone()), ctx.clone()),
    )
    .await;
    let error = result.unwrap_err();
    assert!(!error.is_invalid());
    assert!(error.to_string().contains(&code.to_string()), "{error}");
    let status = status_of(&calls);
    let failed = condition(&status, condition_type);
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("False", reasons::ERROR),
        "{failing_path}"
    );
    assert!(
        failed.message.contains(&code.to_string()),
        "{}",
        failed.message
    );
    let ready = condition(&status, types::READY);
    assert!(
        ready.message.starts_with(condition_type),
        "{}",
        ready.message
    );
    let event = calls.last().unwrap();
    assert_eq!(event.body["reason"], "ReconcileFailed");
    assert_eq!(event.body["type"], "Warning");
    let tenant = Arc::new(world.tenant.clone());
    let first = error_policy(tenant.clone(), &error, ctx.clone());
    let second = error_policy(tenant, &error, ctx.clone());
    assert_eq!(first, Action::requeue(BACKOFF_BASE));
    assert_eq!(second, Action::requeue(BACKOFF_BASE * 2));
    assert!(
        ctx.metrics
            .encode()
            .contains(r#"reconciles_total{kind="Tenant",result="error"} 1"#)
    );
}

#[tokio::test]
async fn a_server_error_on_the_first_read_is_retried() {
    failing_call(0, 500, "InternalError", types::NAMESPACE_READY).await;
}

#[tokio::test]
async fn a_gone_list_is_retried() {
    failing_call(1, 410, "Gone", types::NAMESPACE_READY).await;
}

#[tokio::test]
async fn a_conflict_on_the_deployment_is_retried() {
    let world = World::new(live_tenant(), objects(false));
    let at_call = apply_scenario(&world, &new_tenant_writes())
        .iter()
        .position(|e| e.path.ends_with("/deployments/agentry-runtime"))
        .unwrap();
    failing_call(at_call, 409, "Conflict", types::RUNTIME_READY).await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_database_not_ready() {
    let fake = Arc::new(FakeProvisioner {
        fail: true,
        ..FakeProvisioner::default()
    });
    let world = World::new(live_tenant(), objects(false));
    let mut scenario = apply_scenario(&world, &new_tenant_writes());
    let at_call = scenario
        .iter()
        .position(|e| e.path.ends_with("/secrets/agentry-runtime-credentials") && e.apply)
        .unwrap();
    scenario.truncate(at_call);
    let tenant = serde_json::to_value(&world.tenant).unwrap();
    scenario.push(apply(format!("{TENANT_PATH}/status")).reply(Reply::Echo {
        base: tenant,
        extra: json!({}),
    }));
    scenario.push(event());
    let (ctx, handle) = context(settings(), fake, at(1_000));
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(world.tenant.clone()), ctx),
    )
    .await;
    assert!(result.is_err());
    let status = status_of(&calls);
    let db = condition(&status, types::DATABASE_READY);
    assert_eq!(db.status, "False");
    assert!(db.message.contains("database"), "{}", db.message);
    assert_eq!(condition(&status, types::NAMESPACE_READY).status, "True");
}

#[tokio::test]
async fn a_failure_of_a_converged_tenant_changes_only_the_failing_condition() {
    let fake = Arc::new(FakeProvisioner::default());
    let (again, _) = converged_world(fake.clone()).await;

    let mut scenario = apply_scenario(&again, &Writes::default());
    let at_call = scenario
        .iter()
        .position(|e| e.path.ends_with("/deployments/agentry-runtime"))
        .unwrap();
    scenario.truncate(at_call + 1);
    scenario[at_call].reply = Reply::status(409, "Conflict");
    let tenant = serde_json::to_value(&again.tenant).unwrap();
    scenario.push(apply(format!("{TENANT_PATH}/status")).reply(Reply::Echo {
        base: tenant,
        extra: json!({}),
    }));
    scenario.push(event());
    let (ctx, handle) = context(settings(), fake, at(9_000));
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(again.tenant.clone()), ctx),
    )
    .await;
    assert!(result.is_err());
    let status = status_of(&calls);
    for type_ in [
        types::NAMESPACE_READY,
        types::DATABASE_READY,
        types::BUNDLE_READY,
    ] {
        let c = condition(&status, type_);
        assert_eq!(c.status, "True", "{type_}");
        assert_eq!(c.last_transition_time, at(1_000), "{type_}");
    }
    let runtime = condition(&status, types::RUNTIME_READY);
    assert_eq!(runtime.status, "False");
    assert_eq!(runtime.last_transition_time, at(9_000));
    assert_eq!(
        status.bundle_hash,
        again.tenant.status.as_ref().unwrap().bundle_hash
    );
    assert_eq!(status.phase, Some(TenantPhase::Degraded));
}

#[tokio::test]
async fn a_failed_read_of_the_cached_tenant_is_retried_with_backoff() {
    let fake = Arc::new(FakeProvisioner::default());
    let (ctx, handle) = context(settings(), fake.clone(), at(1_000));
    let cached = cached(&live_tenant());
    let (result, _) = run_scenario(
        handle,
        vec![get(TENANT_PATH, Reply::status(500, "InternalError"))],
        crate::controller::reconcile_cached(cached.clone(), ctx.clone()),
    )
    .await;
    let error = result.unwrap_err();
    assert!(error.to_string().contains("get Tenant acme"), "{error}");
    assert!(!error.is_invalid());
    assert_eq!(
        error_policy(cached, &error, ctx.clone()),
        Action::requeue(BACKOFF_BASE)
    );
    assert!(
        ctx.metrics
            .encode()
            .contains(r#"reconciles_total{kind="Tenant",result="error"} 1"#)
    );
    assert!(fake.calls().is_empty());
}
