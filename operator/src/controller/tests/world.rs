//! The API server's state before a reconcile, and the calls a reconcile of it makes.

use std::sync::Arc;

use agentry_crds::conditions::find;
use agentry_crds::tenant::TenantPhase;
use agentry_crds::{Tenant, TenantStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt as _};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::*;
use crate::controller::{Context, Error, reconcile};
use crate::fixtures::{Objects, at, tenant};
use crate::settings::tests::settings;

pub(crate) const NS: &str = "tenant-acme";
pub(crate) const TENANT_PATH: &str = "/apis/agentry.dev/v1alpha1/tenants/acme";

pub(crate) fn core(resource: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{resource}/{name}")
}

pub(crate) fn grouped(group_version: &str, resource: &str, name: &str) -> String {
    format!("/apis/{group_version}/namespaces/{NS}/{resource}/{name}")
}

pub(crate) fn crd_list(resource: &str) -> String {
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
    /// Secrets in the tenant namespace that Tools reference, as the API server answers a
    /// GET of each (`None`: 404), in name order.
    pub tool_secrets: Vec<(&'static str, Option<Value>)>,
}

impl World {
    pub(crate) fn new(tenant: Tenant, objects: Objects) -> Self {
        Self {
            tenant,
            namespace: None,
            credentials: None,
            objects,
            available: 1,
            tool_secrets: Vec::new(),
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
    /// Tools whose status write is followed by a `SecretMissing` Event.
    pub secret_missing_events: Vec<&'static str>,
}

pub(crate) fn not_found() -> Reply {
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
    ];
    for (name, secret) in &world.tool_secrets {
        s.push(get(core("secrets", name), found(secret)));
    }
    s.extend([
        apply(format!("/api/v1/namespaces/{NS}")),
        apply(core("resourcequotas", "agentry-quota")),
        apply(core("limitranges", "agentry-limits")),
    ]);
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
        if writes.secret_missing_events.contains(name) {
            s.push(namespaced_event());
        }
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
        secret_missing_events: Vec::new(),
    }
}

pub(crate) fn find_call<'a>(calls: &'a [Call], method: &str, path: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| c.method == method && c.path == path)
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

pub(crate) fn status_of(calls: &[Call]) -> TenantStatus {
    let call = find_call(calls, "PATCH", &format!("{TENANT_PATH}/status"));
    assert_eq!(call.body["apiVersion"], "agentry.dev/v1alpha1");
    assert_eq!(call.body["kind"], "Tenant");
    serde_json::from_value(call.body["status"].clone()).unwrap()
}

pub(crate) fn condition<'a>(
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

/// The Tenant's metadata as the controller's cache holds it.
pub(crate) fn cached(tenant: &Tenant) -> Arc<PartialObjectMeta<Tenant>> {
    Arc::new(tenant.metadata.clone().into_response_partial())
}

/// A new tenant reconciled once: the world as the API server then holds it, and the calls of
/// that first reconcile.
pub(crate) async fn converged_world(fake: Arc<FakeProvisioner>) -> (World, Vec<Call>) {
    let world = World::new(live_tenant(), crate::fixtures::objects(false));
    let (first, calls, _) = reconcile_world(&world, &new_tenant_writes(), fake, at(1_000)).await;
    first.unwrap();
    (converged(&world, &calls), calls)
}

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

/// Objects as the API server holds them: each with a uid (the fixtures have generations).
fn stored_objects() -> Objects {
    let mut o = crate::fixtures::objects(false);
    let metas = o.agents.iter_mut().map(|a| &mut a.metadata);
    let metas = metas.chain(o.tools.iter_mut().map(|t| &mut t.metadata));
    let metas = metas.chain(o.workflows.iter_mut().map(|w| &mut w.metadata));
    for meta in metas.chain(o.flags.iter_mut().map(|f| &mut f.metadata)) {
        meta.uid = Some(format!("uid-{}", meta.name.clone().unwrap()));
    }
    o
}

/// Three reconciles of one tenant by one controller, and what they did.
pub(crate) struct ReadBack {
    pub results: Vec<Result<Action, Error>>,
    pub calls: Vec<Call>,
    pub ctx: Arc<Context>,
    /// The bundle ConfigMap the first reconcile applied.
    pub published: Value,
}

/// The first reconcile compiles; the next two find the inputs unchanged and read the bundle
/// ConfigMap back, which holds the published bundle (reused), then a hand-edited one
/// (compiled again and put back).
pub(crate) async fn bundle_read_back() -> ReadBack {
    let fake = Arc::new(FakeProvisioner::default());
    let world = World::new(live_tenant(), stored_objects());
    // What the API server holds once the first reconcile is done.
    let (first, calls, _) =
        reconcile_world(&world, &new_tenant_writes(), fake.clone(), at(1_000)).await;
    first.unwrap();
    let again = converged(&world, &calls);
    let bundle_path = core("configmaps", "agentry-bundle");
    let published = find_call(&calls, "PATCH", &bundle_path).body.clone();
    let mut edited = published.clone();
    edited["data"]["bundle.json"] = json!("{\"hash\":\"edited by hand\"}");

    let (ctx, handle) = context(settings(), fake, at(1_000));
    let mut scenario = apply_scenario(&world, &new_tenant_writes());
    for held in [published.clone(), edited] {
        let mut converged = apply_scenario(&again, &Writes::default());
        // After the namespace, the four lists and the credentials Secret.
        converged.insert(6, get(bundle_path.clone(), Reply::Json(200, held)));
        scenario.extend(converged);
    }
    let (results, calls) = run_scenario(handle, scenario, async {
        let mut results = Vec::new();
        for tenant in [&world.tenant, &again.tenant, &again.tenant] {
            results.push(reconcile(Arc::new(tenant.clone()), ctx.clone()).await);
        }
        results
    })
    .await;
    ReadBack {
        results,
        calls,
        ctx,
        published,
    }
}
