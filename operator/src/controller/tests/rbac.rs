//! Every API call the controller makes is granted by `rbac::PERMISSIONS`, and every row of the
//! table is used, so the Helm chart's ClusterRole (checked against the table) grants exactly
//! what the operator needs.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::world::*;
use super::*;
use crate::controller::{WATCHED, reconcile};
use crate::fixtures::{at, objects};
use crate::leader::LEASE_PERMISSIONS;
use crate::rbac::{PERMISSIONS, allows};
use crate::settings::IngressSettings;
use crate::settings::tests::settings;

type Permission = (String, String, String);

/// `(group, resource, verb)` of a recorded request.
fn permission(call: &Call) -> Vec<Permission> {
    let segments: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", call.path),
    };
    let rest: Vec<&str> = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail.to_vec(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected path {}", call.path),
    };
    // A namespace itself reads as `namespaces/<name>`.
    let resource = if group.is_empty() && rest.is_empty() {
        "namespaces".to_owned()
    } else {
        resource
    };
    let verbs: Vec<&str> = match (call.method.as_str(), named) {
        ("GET", true) => vec!["get"],
        ("GET", false) => vec!["list"],
        ("POST", _) => vec!["create"],
        ("DELETE", _) => vec!["delete"],
        // Server-side apply creates what does not exist yet.
        ("PATCH", _) if call.is_apply() && !resource.ends_with("/status") => {
            vec!["create", "patch"]
        }
        ("PATCH", _) => vec!["patch"],
        (m, _) => panic!("unexpected method {m}"),
    };
    verbs
        .into_iter()
        .map(|v| (group.to_owned(), resource.clone(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn every_permission_is_used_and_every_call_is_permitted() {
    let mut used: BTreeSet<Permission> = BTreeSet::new();
    let mut record = |calls: &[Call]| {
        for call in calls {
            for p in permission(call) {
                assert!(
                    allows(&p.0, &p.1, &p.2),
                    "{} {} needs {p:?}",
                    call.method,
                    call.path
                );
                used.insert(p);
            }
        }
    };

    // A new tenant with an autoscaler, an Ingress and a provider key.
    let fake = Arc::new(FakeProvisioner::default());
    let mut tenant = live_tenant();
    tenant.spec.runtime = Some(agentry_crds::tenant::RuntimeSpec {
        autoscaling: Some(agentry_crds::tenant::AutoscalingSpec {
            min_replicas: None,
            max_replicas: 3,
            target_cpu_utilization_percentage: None,
        }),
        ..Default::default()
    });
    tenant
        .spec
        .providers
        .push(agentry_crds::tenant::ProviderSpec {
            name: "openai".to_owned(),
            type_: agentry_crds::tenant::ProviderType::Openai,
            base_url: Some("https://api.openai.com/v1".to_owned()),
            api_key_secret_ref: Some(agentry_crds::common::SecretKeyRef {
                name: "openai-key".to_owned(),
                key: "api-key".to_owned(),
            }),
            timeout_ms: None,
        });
    let world = World::new(tenant, objects(false));
    let writes = Writes {
        hpa: true,
        ..new_tenant_writes()
    };
    let mut scenario = apply_scenario(&world, &writes);
    let provider_key = get(
        "/api/v1/namespaces/agentry-system/secrets/openai-key",
        Reply::Json(
            200,
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "openai-key", "namespace": "agentry-system"},
            "data": {"api-key": "c2stMQ=="}}),
        ),
    );
    scenario.insert(6, provider_key);
    let ingress = apply(grouped(
        "networking.k8s.io/v1",
        "ingresses",
        "agentry-runtime",
    ));
    let after_hpa = scenario
        .iter()
        .position(|e| e.path.contains("horizontalpodautoscalers"))
        .unwrap()
        + 1;
    scenario.insert(after_hpa, ingress);
    let mut with_ingress = settings();
    with_ingress.ingress = Some(IngressSettings {
        class: Some("nginx".to_owned()),
        base_domain: "agentry.example.com".to_owned(),
        tls: false,
        annotations: Default::default(),
    });
    let (ctx, handle) = context(with_ingress, fake.clone(), at(1_000));
    let (result, calls) = run_scenario(
        handle,
        scenario,
        reconcile(Arc::new(world.tenant.clone()), ctx),
    )
    .await;
    result.unwrap();
    let keys = find_call(&calls, "PATCH", &core("secrets", "agentry-provider-keys"));
    assert_eq!(keys.body["data"]["openai-key_api-key"], "c2stMQ==");
    record(&calls);

    // Without an autoscaler (its delete), the finalizer's add and the deletion path.
    let plain = World::new(live_tenant(), objects(false));
    let (_, calls, _) =
        reconcile_world(&plain, &new_tenant_writes(), fake.clone(), at(1_000)).await;
    record(&calls);
    // As the controller runs it: from the cached metadata, reading the Tenant first.
    let (ctx, handle) = context(settings(), fake.clone(), at(1_000));
    let new_tenant = crate::fixtures::tenant();
    let (_, calls) = run_scenario(
        handle,
        vec![
            get(
                TENANT_PATH,
                Reply::Json(200, serde_json::to_value(&new_tenant).unwrap()),
            ),
            patch(
                TENANT_PATH,
                Reply::Json(200, serde_json::to_value(live_tenant()).unwrap()),
            ),
        ],
        crate::controller::reconcile_cached(cached(&new_tenant), ctx),
    )
    .await;
    record(&calls);
    let (ctx, handle) = context(settings(), fake, at(6_000));
    let (_, calls) = run_scenario(
        handle,
        deletion_scenario(),
        reconcile(Arc::new(deleted_tenant()), ctx),
    )
    .await;
    record(&calls);

    // A converged tenant reads its bundle back.
    record(&bundle_read_back().await.calls);

    // A repeated Event becomes a series (a patch of the first).
    let (ctx, handle) = context(settings(), Arc::new(FakeProvisioner::default()), at(1_000));
    let (_, calls) = run_scenario(handle, vec![event(), event_series()], async {
        for _ in 0..2 {
            ctx.publish(
                &live_tenant(),
                kube::runtime::events::EventType::Warning,
                "ReconcileFailed",
                "boom".to_owned(),
            )
            .await;
        }
    })
    .await;
    record(&calls);

    // Watches list and watch; the lease manager reads, creates and patches its Lease;
    // blockOwnerDeletion needs update on the owner's finalizers.
    for (group, resource) in WATCHED {
        for verb in ["list", "watch"] {
            used.insert(((*group).to_owned(), (*resource).to_owned(), verb.to_owned()));
        }
    }
    for verb in LEASE_PERMISSIONS {
        used.insert((
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            (*verb).to_owned(),
        ));
    }
    used.insert((
        "agentry.dev".to_owned(),
        "tenants/finalizers".to_owned(),
        "update".to_owned(),
    ));

    let table: BTreeSet<Permission> = PERMISSIONS
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect();
    let unused: Vec<_> = table.difference(&used).collect();
    let missing: Vec<_> = used.difference(&table).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
    assert!(missing.is_empty(), "used but not granted: {missing:?}");
}
