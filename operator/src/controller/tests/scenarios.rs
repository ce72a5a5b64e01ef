//! What the controller does for a new, converged, invalid, suspended, autoscaled and deleted
//! tenant, call by call.

use std::sync::Arc;

use agentry_crds::bundle::RuntimeBundle;
use agentry_crds::conditions::{reasons, types};
use agentry_crds::tenant::TenantPhase;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::world::*;
use super::*;
use crate::controller::reconcile;
use crate::fixtures::{at, objects, tenant};
use crate::settings::tests::settings;

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

/// Path and body of every apply of an object (not of a status), in order.
fn object_applies(calls: &[Call]) -> Vec<(String, Value)> {
    calls
        .iter()
        .filter(|c| c.is_apply() && !c.path.ends_with("/status"))
        .map(|c| (c.path.clone(), c.body.clone()))
        .collect()
}

#[tokio::test]
async fn a_converged_tenant_applies_identical_objects_and_writes_no_status() {
    let fake = Arc::new(FakeProvisioner::default());
    let (again, calls) = converged_world(fake.clone()).await;
    // Later, nothing changed: only the applies, no status, no event.
    let (second, calls2, ctx) =
        reconcile_world(&again, &Writes::default(), fake.clone(), at(9_000)).await;
    second.unwrap();
    assert_eq!(object_applies(&calls), object_applies(&calls2));
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
async fn an_unchanged_tenant_reads_its_bundle_back_and_a_drifted_one_is_compiled_again() {
    let run = bundle_read_back().await;
    for result in run.results {
        result.unwrap();
    }
    let applied: Vec<&Value> = run
        .calls
        .iter()
        .filter(|c| c.is_apply() && c.path == core("configmaps", "agentry-bundle"))
        .map(|c| &c.body)
        .collect();
    assert_eq!(applied, [&run.published, &run.published, &run.published]);
    let metrics = run.ctx.metrics.encode();
    assert!(
        metrics.contains("agentry_operator_bundles_total{outcome=\"compiled\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentry_operator_bundles_total{outcome=\"reused\"} 1"),
        "{metrics}"
    );
}

/// A Tool whose header value comes from a Secret in the tenant namespace.
const SECRET_TOOL: &str = r#"
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: weather, namespace: tenant-acme, generation: 1}
spec:
  description: Weather.
  type: http
  http:
    url: https://weather.example/v1
    headers:
      - {name: X-Api-Key, valueFrom: {secretKeyRef: {name: weather-api, key: token}}}
"#;

fn secret_with(keys: &[&str]) -> Value {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), json!("c2VjcmV0")))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "weather-api", "namespace": NS, "resourceVersion": "3"},
        "data": data,
    })
}

#[tokio::test]
async fn a_tool_whose_secret_is_missing_says_which_secret_and_key_with_an_event() {
    let fake = Arc::new(FakeProvisioner::default());
    let mut objs = objects(false);
    objs.tools
        .extend(crate::fixtures::parse(SECRET_TOOL).1.tools);
    let mut world = World::new(live_tenant(), objs);
    world.tool_secrets = vec![("weather-api", None)];
    let mut writes = new_tenant_writes();
    writes.children.insert(2, ("tools", "weather"));
    writes.secret_missing_events = vec!["weather"];
    let (result, calls, _) = reconcile_world(&world, &writes, fake.clone(), at(1_000)).await;
    result.unwrap();

    let weather = find_call(
        &calls,
        "PATCH",
        &format!("{}/weather/status", crd_list("tools")),
    );
    let ready = &weather.body["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::WAITING);
    let expected = "header X-Api-Key: Secret tenant-acme/weather-api (key \"token\") not found";
    assert!(
        ready["message"].as_str().unwrap().contains(expected),
        "{ready}"
    );
    let event = find_call(
        &calls,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/tenant-acme/events",
    );
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "SecretMissing");
    assert_eq!(event.body["regarding"]["kind"], "Tool");
    assert_eq!(event.body["regarding"]["name"], "weather");
    assert!(
        event.body["note"].as_str().unwrap().contains(expected),
        "{}",
        event.body
    );
    // The tool is still published (its calls fail naming the Secret), the rest serves, and
    // the pod mounts the Secret optionally so that it starts meanwhile.
    let bundle = find_call(&calls, "PATCH", &core("configmaps", "agentry-bundle"));
    let published: RuntimeBundle =
        serde_json::from_str(bundle.body["data"]["bundle.json"].as_str().unwrap()).unwrap();
    assert!(published.tools.contains_key("weather"));
    let status = status_of(&calls);
    assert_eq!(status.phase, Some(TenantPhase::Ready));
    let bundle_ready = condition(&status, types::BUNDLE_READY);
    assert!(
        bundle_ready
            .message
            .contains("1 tools wait for a Secret (see their Ready condition)"),
        "{}",
        bundle_ready.message
    );

    // Reconciled again with the Secret still missing: nothing new is written or published.
    let again = converged(&world, &calls);
    let (second, calls2, _) =
        reconcile_world(&again, &Writes::default(), fake.clone(), at(2_000)).await;
    second.unwrap();
    assert!(calls2.iter().all(|c| c.method != "POST"), "no second event");

    // A Secret without the key: the message says which key is missing.
    let mut wrong_key = again.clone();
    wrong_key.tool_secrets = vec![("weather-api", Some(secret_with(&["other"])))];
    let writes = Writes {
        children: vec![("tools", "weather")],
        secret_missing_events: vec!["weather"],
        ..Writes::default()
    };
    let (third, calls3, _) = reconcile_world(&wrong_key, &writes, fake.clone(), at(3_000)).await;
    third.unwrap();
    let weather = find_call(
        &calls3,
        "PATCH",
        &format!("{}/weather/status", crd_list("tools")),
    );
    let message = weather.body["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("Secret tenant-acme/weather-api has no key \"token\""),
        "{message}"
    );

    // Once the key exists the Tool is Ready, without an event.
    let mut fixed = again;
    fixed.tool_secrets = vec![("weather-api", Some(secret_with(&["token"])))];
    let writes = Writes {
        children: vec![("tools", "weather")],
        status: true,
        ..Writes::default()
    };
    let (fourth, calls4, _) = reconcile_world(&fixed, &writes, fake, at(4_000)).await;
    fourth.unwrap();
    let weather = find_call(
        &calls4,
        "PATCH",
        &format!("{}/weather/status", crd_list("tools")),
    );
    let ready = &weather.body["status"]["conditions"][0];
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::COMPILED);
    let status = status_of(&calls4);
    let bundle_ready = condition(&status, types::BUNDLE_READY);
    assert!(!bundle_ready.message.contains("wait for a Secret"));
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
async fn the_controller_reads_the_tenant_behind_its_cached_metadata_and_indexes_it() {
    let fake = Arc::new(FakeProvisioner::default());
    let (again, calls) = converged_world(fake.clone()).await;

    // The cache and the index are older than the API server: the Tenant was in another
    // namespace when last reconciled, and the cached metadata is an older version. The
    // Tenant read is what counts, and the index moves to its namespace.
    let mut stale = again.tenant.clone();
    stale.metadata.resource_version = Some("1".to_owned());
    stale.spec.namespace = Some("elsewhere".to_owned());
    let (ctx, handle) = context(settings(), fake.clone(), at(9_000));
    ctx.index.record(&stale);
    assert_eq!(ctx.index.tenants_in_namespace("elsewhere"), ["acme"]);
    let mut scenario = vec![get(
        TENANT_PATH,
        Reply::Json(200, serde_json::to_value(&again.tenant).unwrap()),
    )];
    scenario.extend(apply_scenario(&again, &Writes::default()));
    let (result, calls2) = run_scenario(
        handle,
        scenario,
        crate::controller::reconcile_cached(cached(&stale), ctx.clone()),
    )
    .await;
    result.unwrap();
    assert_eq!(object_applies(&calls), object_applies(&calls2));
    assert_eq!(ctx.index.tenants_in_namespace(NS), ["acme"]);
    assert!(ctx.index.tenants_in_namespace("elsewhere").is_empty());
}

#[tokio::test]
async fn a_tenant_gone_before_its_reconcile_has_nothing_left_to_do() {
    let fake = Arc::new(FakeProvisioner::default());
    let (ctx, handle) = context(settings(), fake.clone(), at(1_000));
    ctx.index.record(&live_tenant());
    let (result, calls) = run_scenario(
        handle,
        vec![get(TENANT_PATH, not_found())],
        crate::controller::reconcile_cached(cached(&live_tenant()), ctx.clone()),
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(calls.len(), 1);
    assert!(
        ctx.index.is_empty(),
        "a Tenant gone leaves no mapping behind"
    );
    assert!(fake.calls().is_empty());
}
