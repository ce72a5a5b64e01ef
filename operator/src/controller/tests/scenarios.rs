//! What the controller does for a new, converged, invalid, suspended, deleted and failing
//! tenant, call by call.

use std::sync::Arc;

use agentry_crds::bundle::RuntimeBundle;
use agentry_crds::conditions::{find, reasons, types};
use agentry_crds::tenant::TenantPhase;
use agentry_crds::{Tenant, TenantStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::*;
use crate::controller::{BACKOFF_BASE, Context, Error, error_policy, reconcile};
use crate::fixtures::{Objects, at, objects, tenant};
use crate::settings::tests::settings;

pub(crate) const NS: &str = "tenant-acme";
pub(crate) const TENANT_PATH: &str = "/apis/agentry.dev/v1alpha1/tenants/acme";

pub(crate) fn core(resource: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{resource}/{name}")
}

pub(crate) fn grouped(group_version: &str, resource: &str, name: &str) -> String {
    format!("/apis/{group_version}/namespaces/{NS}/{resource}/{name}")
}

fn crd_list(resource: &str) -> String {
    format!("/apis/agentry.dev/v1alpha1/namespaces/{NS}/{resource}")
}

/// A Tenant that already carries the operator's finalizer (its first reconcile added it).
pub(crate) fn live_tenant() -> Tenant {
    let mut t = tenant();
    t.metadata.finalizers = Some(vec![crate::controller::FINALIZER.to_owned()]);
    t.metadata.resource_version = Some("7".to_owned());
    t
}

/// What the API server holds before a reconcile.
#[derive(Debug, Clone)]
pub(crate) struct World {
    pub tenant: Tenant,
    pub namespace: Option<Value>,
    pub credentials: Option<Value>,
    pub objects: Objects,
    pub available: i32,
}

impl World {
    pub(crate) fn new(tenant: Tenant, objects: Objects) -> Self {
        Self {
            tenant,
            namespace: None,
            credentials: None,
            objects,
            available: 1,
        }
    }
}

/// What the reconcile is expected to write besides the applies.
#[derive(Debug, Clone, Default)]
pub(crate) struct Writes {
    /// The Provisioned event after new credentials.
    pub provisioned_event: bool,
    /// Status writes of tenant objects: `(resource, name)`.
    pub children: Vec<(&'static str, &'static str)>,
    /// The Tenant status write, and whether `Ready` moved (an Event).
    pub status: bool,
    pub transition_event: bool,
    /// The autoscaler is applied (else deleted).
    pub hpa: bool,
}

fn not_found() -> Reply {
    Reply::status(404, "NotFound")
}

fn found(value: &Option<Value>) -> Reply {
    value
        .clone()
        .map_or_else(not_found, |v| Reply::Json(200, v))
}

fn items<K: serde::Serialize>(objects: &[K]) -> Vec<Value> {
    objects
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

/// The calls of an apply reconcile, in order.
pub(crate) fn apply_scenario(world: &World, writes: &Writes) -> Vec<Expect> {
    let o = &world.objects;
    let mut s = vec![
        get(format!("/api/v1/namespaces/{NS}"), found(&world.namespace)),
        list(crd_list("agents"), "Agent", items(&o.agents)),
        list(crd_list("tools"), "Tool", items(&o.tools)),
        list(crd_list("workflows"), "Workflow", items(&o.workflows)),
        list(crd_list("featureflags"), "FeatureFlag", items(&o.flags)),
        get(
            core("secrets", "agentry-runtime-credentials"),
            found(&world.credentials),
        ),
        apply(format!("/api/v1/namespaces/{NS}")),
        apply(core("resourcequotas", "agentry-quota")),
        apply(core("limitranges", "agentry-limits")),
    ];
    for policy in crate::builders::network::POLICY_NAMES {
        s.push(apply(grouped(
            "networking.k8s.io/v1",
            "networkpolicies",
            policy,
        )));
    }
    s.push(apply(core("serviceaccounts", "agentry-runtime")));
    s.push(apply(core("secrets", "agentry-runtime-credentials")));
    if writes.provisioned_event {
        s.push(event());
    }
    s.push(apply(core("secrets", "agentry-provider-keys")));
    s.push(apply(core("configmaps", "agentry-bundle")));
    s.push(
        apply(grouped("apps/v1", "deployments", "agentry-runtime")).reply(Reply::Echo {
            base: json!({}),
            extra: json!({"status": {"availableReplicas": world.available}}),
        }),
    );
    s.push(apply(core("services", "agentry-runtime")));
    s.push(apply(grouped(
        "policy/v1",
        "poddisruptionbudgets",
        "agentry-runtime",
    )));
    let hpa = grouped(
        "autoscaling/v2",
        "horizontalpodautoscalers",
        "agentry-runtime",
    );
    s.push(if writes.hpa {
        apply(hpa)
    } else {
        delete(hpa, not_found())
    });
    for (resource, name) in &writes.children {
        let base = child_json(o, resource, name);
        s.push(
            apply(format!("{}/{name}/status", crd_list(resource))).reply(Reply::Echo {
                base,
                extra: json!({}),
            }),
        );
    }
    if writes.status {
        s.push(apply(format!("{TENANT_PATH}/status")).reply(Reply::Echo {
            base: serde_json::to_value(&world.tenant).unwrap(),
            extra: json!({}),
        }));
    }
    if writes.transition_event {
        s.push(event());
    }
    s
}

fn child_json(o: &Objects, resource: &str, name: &str) -> Value {
    let pick = |v: Vec<Value>| {
        v.into_iter()
            .find(|x| x["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {resource} {name} in the world"))
    };
    match resource {
        "agents" => pick(items(&o.agents)),
        "tools" => pick(items(&o.tools)),
        "workflows" => pick(items(&o.workflows)),
        _ => pick(items(&o.flags)),
    }
}

pub(crate) fn all_children() -> Vec<(&'static str, &'static str)> {
    vec![
        ("agents", "triage"),
        ("tools", "clock"),
        ("workflows", "hello"),
        ("featureflags", "support"),
    ]
}

pub(crate) fn new_tenant_writes() -> Writes {
    Writes {
        provisioned_event: true,
        children: all_children(),
        status: true,
        transition_event: true,
        hpa: false,
    }
}

pub(crate) fn find_call<'a>(calls: &'a [Call], method: &str, path: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| c.method == method && c.path == path)
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

fn status_of(calls: &[Call]) -> TenantStatus {
    let call = find_call(calls, "PATCH", &format!("{TENANT_PATH}/status"));
    assert_eq!(call.body["apiVersion"], "agentry.dev/v1alpha1");
    assert_eq!(call.body["kind"], "Tenant");
    serde_json::from_value(call.body["status"].clone()).unwrap()
}

fn condition<'a>(
    status: &'a TenantStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"))
}

pub(crate) async fn reconcile_world(
    world: &World,
    writes: &Writes,
    fake: Arc<FakeProvisioner>,
    now: Time,
) -> (Result<Action, Error>, Vec<Call>, Arc<Context>) {
    let (ctx, handle) = context(settings(), fake, now);
    let scenario = apply_scenario(world, writes);
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(world.tenant.clone()), ctx.clone()),
    )
    .await;
    (result, calls, ctx)
}

#[tokio::test]
async fn a_new_tenant_gets_its_namespace_database_bundle_and_runtime() {
    let fake = Arc::new(FakeProvisioner::default());
    let world = World::new(live_tenant(), objects(false));
    let (result, calls, _) =
        reconcile_world(&world, &new_tenant_writes(), fake.clone(), at(1_000)).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(std::time::Duration::from_secs(300))
    );
    assert_eq!(fake.calls(), ["ensure acme suspended=false"]);

    let ns = find_call(&calls, "PATCH", &format!("/api/v1/namespaces/{NS}"));
    assert_eq!(ns.body["metadata"]["labels"]["agentry.dev/tenant"], "acme");
    assert_eq!(
        ns.body["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(ns.body["metadata"]["ownerReferences"][0]["kind"], "Tenant");
    assert_eq!(
        ns.body["metadata"]["ownerReferences"][0]["uid"],
        "0b8c3a52-0000-4000-8000-000000000001"
    );

    let creds = find_call(
        &calls,
        "PATCH",
        &core("secrets", "agentry-runtime-credentials"),
    );
    let password = &creds.body["data"]["password"];
    assert_eq!(
        password.as_str().map(|p| p.len()),
        Some(44),
        "base64 of the generated password: {password}"
    );
    assert!(creds.body.get("stringData").is_none());

    let bundle = find_call(&calls, "PATCH", &core("configmaps", "agentry-bundle"));
    let published: RuntimeBundle =
        serde_json::from_str(bundle.body["data"]["bundle.json"].as_str().unwrap()).unwrap();
    assert!(published.verify_hash());
    assert!(published.agents.contains_key("triage"));
    assert_eq!(published.tenant.display_name.as_deref(), Some("Acme Corp"));

    let deployment = find_call(
        &calls,
        "PATCH",
        &grouped("apps/v1", "deployments", "agentry-runtime"),
    );
    assert_eq!(deployment.body["spec"]["replicas"], 1);
    let container = &deployment.body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/agentry-runtime:1.2.3");

    let status = status_of(&calls);
    assert_eq!(status.phase, Some(TenantPhase::Ready));
    assert_eq!(status.namespace.as_deref(), Some(NS));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://agentry-runtime.tenant-acme.svc")
    );
    assert_eq!(status.bundle_hash.as_deref(), Some(published.hash.as_str()));
    let counts = status.counts.clone().unwrap();
    assert_eq!(
        (
            counts.agents,
            counts.tools,
            counts.workflows,
            counts.flags,
            counts.invalid
        ),
        (1, 1, 1, 1, 0)
    );
    for type_ in [
        types::NAMESPACE_READY,
        types::DATABASE_READY,
        types::BUNDLE_READY,
        types::RUNTIME_READY,
        types::READY,
    ] {
        let c = condition(&status, type_);
        assert_eq!(c.status, "True", "{type_}: {}", c.message);
        assert_eq!(c.observed_generation, Some(1));
        assert_eq!(c.last_transition_time, at(1_000));
    }
    assert!(
        condition(&status, types::RUNTIME_READY)
            .message
            .contains("1 of 1")
    );

    let agent = find_call(
        &calls,
        "PATCH",
        &format!("{}/triage/status", crd_list("agents")),
    );
    assert_eq!(
        agent.body["status"]["conditions"][0]["reason"],
        reasons::COMPILED
    );
    assert_eq!(agent.body["status"]["model"], "small");

    let events: Vec<&Call> = calls.iter().filter(|c| c.method == "POST").collect();
    assert_eq!(events[0].body["reason"], "Provisioned");
    assert!(
        events[0].body["note"]
            .as_str()
            .unwrap()
            .contains("agentry_tenant_acme")
    );
    assert_eq!(events[1].body["reason"], "Ready");
    assert_eq!(events[1].body["type"], "Normal");
    assert_eq!(events[1].body["regarding"]["kind"], "Tenant");
}

/// The world after a first reconcile: what it applied is what the API server now holds.
pub(crate) fn converged(world: &World, calls: &[Call]) -> World {
    let mut next = world.clone();
    next.tenant.status = Some(status_of(calls));
    next.namespace = Some(
        find_call(calls, "PATCH", &format!("/api/v1/namespaces/{NS}"))
            .body
            .clone(),
    );
    next.credentials = Some(
        find_call(
            calls,
            "PATCH",
            &core("secrets", "agentry-runtime-credentials"),
        )
        .body
        .clone(),
    );
    let status = |resource: &str, name: &str| {
        find_call(
            calls,
            "PATCH",
            &format!("{}/{name}/status", crd_list(resource)),
        )
        .body["status"]
            .clone()
    };
    for a in &mut next.objects.agents {
        a.status = serde_json::from_value(status("agents", &a.metadata.name.clone().unwrap())).ok();
    }
    for t in &mut next.objects.tools {
        t.status = serde_json::from_value(status("tools", &t.metadata.name.clone().unwrap())).ok();
    }
    for w in &mut next.objects.workflows {
        w.status =
            serde_json::from_value(status("workflows", &w.metadata.name.clone().unwrap())).ok();
    }
    for f in &mut next.objects.flags {
        f.status =
            serde_json::from_value(status("featureflags", &f.metadata.name.clone().unwrap())).ok();
    }
    next
}

#[tokio::test]
async fn a_converged_tenant_applies_identical_objects_and_writes_no_status() {
    let fake = Arc::new(FakeProvisioner::default());
    let world = World::new(live_tenant(), objects(false));
    let (first, calls, _) =
        reconcile_world(&world, &new_tenant_writes(), fake.clone(), at(1_000)).await;
    first.unwrap();

    let again = converged(&world, &calls);
    // Later, nothing changed: only the applies, no status, no event.
    let (second, calls2, ctx) =
        reconcile_world(&again, &Writes::default(), fake.clone(), at(9_000)).await;
    second.unwrap();
    let applies = |calls: &[Call]| -> Vec<(String, Value)> {
        calls
            .iter()
            .filter(|c| c.is_apply() && !c.path.ends_with("/status"))
            .map(|c| (c.path.clone(), c.body.clone()))
            .collect()
    };
    assert_eq!(applies(&calls), applies(&calls2));
    assert!(
        calls2
            .iter()
            .all(|c| !c.path.ends_with("/status") && c.method != "POST")
    );
    assert_eq!(
        fake.calls(),
        ["ensure acme suspended=false", "ensure acme suspended=false"]
    );
    assert!(!ctx.metrics.encode().contains("status_writes_total{"));
}

#[tokio::test]
async fn an_invalid_agent_says_why_and_the_rest_still_compiles() {
    let fake = Arc::new(FakeProvisioner::default());
    let world = World::new(live_tenant(), objects(true));
    let mut writes = new_tenant_writes();
    writes.children.insert(1, ("agents", "broken"));
    let (result, calls, _) = reconcile_world(&world, &writes, fake, at(1_000)).await;
    result.unwrap();

    let broken = find_call(
        &calls,
        "PATCH",
        &format!("{}/broken/status", crd_list("agents")),
    );
    let ready = &broken.body["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::INVALID);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("gpt-nonexistent"),
        "{ready}"
    );
    assert_eq!(broken.body["status"]["observedGeneration"], 3);

    let bundle = find_call(&calls, "PATCH", &core("configmaps", "agentry-bundle"));
    let published: RuntimeBundle =
        serde_json::from_str(bundle.body["data"]["bundle.json"].as_str().unwrap()).unwrap();
    assert!(published.agents.contains_key("triage"));
    assert!(!published.agents.contains_key("broken"));

    let status = status_of(&calls);
    assert_eq!(status.counts.clone().unwrap().invalid, 1);
    let bundle_ready = condition(&status, types::BUNDLE_READY);
    assert_eq!(bundle_ready.status, "True");
    assert!(
        bundle_ready.message.contains("1 invalid objects left out"),
        "{}",
        bundle_ready.message
    );
}

#[tokio::test]
async fn a_suspended_tenant_scales_to_zero_and_is_suspended_in_the_database() {
    let fake = Arc::new(FakeProvisioner::default());
    let mut tenant = live_tenant();
    tenant.spec.suspended = true;
    let mut world = World::new(tenant, objects(false));
    world.available = 0;
    let (result, calls, _) =
        reconcile_world(&world, &new_tenant_writes(), fake.clone(), at(1_000)).await;
    result.unwrap();
    assert_eq!(fake.calls(), ["ensure acme suspended=true"]);
    let deployment = find_call(
        &calls,
        "PATCH",
        &grouped("apps/v1", "deployments", "agentry-runtime"),
    );
    assert_eq!(deployment.body["spec"]["replicas"], 0);
    let status = status_of(&calls);
    assert_eq!(status.phase, Some(TenantPhase::Suspended));
    let ready = condition(&status, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::SUSPENDED)
    );
    let event = calls.iter().rfind(|c| c.method == "POST").unwrap();
    assert_eq!(event.body["reason"], reasons::SUSPENDED);
    assert_eq!(event.body["type"], "Normal");
}

#[tokio::test]
async fn an_autoscaled_tenant_gets_an_autoscaler_and_no_fixed_replicas() {
    let fake = Arc::new(FakeProvisioner::default());
    let mut tenant = live_tenant();
    tenant.spec.runtime = Some(agentry_crds::tenant::RuntimeSpec {
        autoscaling: Some(agentry_crds::tenant::AutoscalingSpec {
            min_replicas: Some(2),
            max_replicas: 5,
            target_cpu_utilization_percentage: None,
        }),
        ..Default::default()
    });
    let world = World::new(tenant, objects(false));
    let writes = Writes {
        hpa: true,
        ..new_tenant_writes()
    };
    let (result, calls, _) = reconcile_world(&world, &writes, fake, at(1_000)).await;
    result.unwrap();
    let deployment = find_call(
        &calls,
        "PATCH",
        &grouped("apps/v1", "deployments", "agentry-runtime"),
    );
    assert!(deployment.body["spec"].get("replicas").is_none());
    let hpa = find_call(
        &calls,
        "PATCH",
        &grouped(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "agentry-runtime",
        ),
    );
    assert_eq!(hpa.body["spec"]["maxReplicas"], 5);
}

#[tokio::test]
async fn a_new_tenant_first_gets_the_finalizer() {
    let fake = Arc::new(FakeProvisioner::default());
    let (ctx, handle) = context(settings(), fake.clone(), at(1_000));
    let scenario = vec![patch(
        TENANT_PATH,
        Reply::Json(200, serde_json::to_value(live_tenant()).unwrap()),
    )];
    let (result, calls) = run_scenario(handle, scenario, reconcile(Arc::new(tenant()), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(calls[0].content_type, "application/json-patch+json");
    assert_eq!(
        calls[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["agentry.dev/cleanup"]},
        ])
    );
    assert!(
        fake.calls().is_empty(),
        "nothing is provisioned before the finalizer is in place"
    );
}

pub(crate) fn deleted_tenant() -> Tenant {
    let mut t = live_tenant();
    t.metadata.deletion_timestamp = Some(at(5_000));
    t.status = Some(TenantStatus {
        phase: Some(TenantPhase::Ready),
        ..TenantStatus::default()
    });
    t
}

pub(crate) fn deletion_scenario() -> Vec<Expect> {
    let tenant = serde_json::to_value(deleted_tenant()).unwrap();
    vec![
        apply(format!("{TENANT_PATH}/status")).reply(Reply::Echo {
            base: tenant.clone(),
            extra: json!({}),
        }),
        delete(
            grouped("apps/v1", "deployments", "agentry-runtime"),
            Reply::Json(
                200,
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "agentry-runtime"}}),
            ),
        ),
        event(),
        patch(TENANT_PATH, Reply::Json(200, tenant)),
    ]
}

#[tokio::test]
async fn deletion_stops_the_runtime_drops_the_role_then_removes_the_finalizer() {
    let fake = Arc::new(FakeProvisioner::default());
    let (ctx, handle) = context(settings(), fake.clone(), at(6_000));
    let (result, calls) = run_scenario(
        handle,
        deletion_scenario(),
        reconcile(Arc::new(deleted_tenant()), ctx),
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(fake.calls(), ["remove acme Retain"]);
    assert_eq!(calls[0].body["status"]["phase"], "Terminating");
    assert!(
        calls[2].body["note"]
            .as_str()
            .unwrap()
            .contains("kept (onDelete: Retain)")
    );
    assert_eq!(calls[3].content_type, "application/json-patch+json");
    assert_eq!(
        calls[3].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "agentry.dev/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
}

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
