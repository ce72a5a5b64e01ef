//! The controller's watches and how each change finds its Tenant.
//!
//! Owned objects are watched by label (`app.kubernetes.io/managed-by=agentry-operator`) and
//! mapped through their owner reference to the Tenant's name ([`owning_tenants`]). Agents, Tools, Workflows, FeatureFlags and Secrets
//! (those Tools read header values from) are mapped to the Tenant whose namespace they live
//! in, and provider key Secrets in the operator's namespace to every Tenant that names them,
//! both through the [`TenantIndex`] each reconcile records its Tenant in. Everything is
//! watched as metadata only, Tenants included: the watches only trigger, reconcile reads what
//! it needs (the Tenant itself first), and specs, statuses, bundles and Secrets stay out of
//! memory.

use std::future::Future;
use std::sync::Arc;

use agentry_crds::{Agent, FeatureFlag, Tenant, Tool, Workflow};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt as _};

use super::{Context, TenantIndex, error_policy, reconcile_cached};
use crate::builders::MANAGED_SELECTOR;

/// Every `(apiGroup, resource)` the controller lists and watches; kept in step with [`run`].
pub const WATCHED: &[(&str, &str)] = &[
    ("agentry.dev", "tenants"),
    ("", "namespaces"),
    ("", "resourcequotas"),
    ("", "limitranges"),
    ("networking.k8s.io", "networkpolicies"),
    ("", "serviceaccounts"),
    ("", "secrets"),
    ("", "configmaps"),
    ("apps", "deployments"),
    ("", "services"),
    ("policy", "poddisruptionbudgets"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("networking.k8s.io", "ingresses"),
    ("agentry.dev", "agents"),
    ("agentry.dev", "tools"),
    ("agentry.dev", "workflows"),
    ("agentry.dev", "featureflags"),
];

/// Objects per page when a watch lists (the initial list and every relist). A page is parsed
/// whole before the first object of it is handed on, managed fields included, so its size
/// sets the controller's peak memory: with 10,000 tenants, kube-runtime's default of 500 made
/// pages of Tenants of about 16 MiB while being parsed, and the process kept that memory after
/// start-up. 50 costs 200 list requests instead of 20 for 10,000 objects.
pub const LIST_PAGE_SIZE: u32 = 50;

/// What the controller caches of a Tenant: its metadata.
pub type CachedTenant = PartialObjectMeta<Tenant>;

/// Reduces a watched object's metadata to what names it (name and namespace) before it
/// enters the cache. Reconcile reads the Tenant itself (uid, resourceVersion, finalizers and
/// spec included) and the controller looks Tenants up by name, so nothing else is read from
/// the cache; managed fields, `kubectl`'s last-applied annotation, GitOps tools' labels and
/// annotations and the finalizer would otherwise be most of each cached Tenant. The uid and
/// resourceVersion are dropped too: every key the reflector and the scheduler make of a
/// cached Tenant copies them (kube-runtime ignores them when comparing keys), four
/// allocations per Tenant for nothing.
pub fn identity_only<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        ..ObjectMeta::default()
    };
}

/// The Tenants that own `object`, keyed as the controller keys Tenants: by name, with no
/// namespace (a Tenant is cluster-scoped). kube-runtime's `owns` keys an owner with its
/// child's namespace, which the scheduler takes for another object: every Tenant got a
/// second scheduler entry, and a second reconcile at start-up and at every resync.
pub fn owning_tenants<K: Resource>(object: K) -> Vec<ObjectRef<CachedTenant>> {
    let api_version = Tenant::api_version(&());
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|owner| owner.kind == Tenant::kind(&()) && owner.api_version == api_version)
        .map(|owner| ObjectRef::new(&owner.name))
        .collect()
}

/// The Tenants whose namespace is `namespace`, as the controller's cache names them.
fn in_namespace(index: &TenantIndex, namespace: Option<String>) -> Vec<ObjectRef<CachedTenant>> {
    namespace
        .map(|ns| index.tenants_in_namespace(&ns))
        .unwrap_or_default()
        .iter()
        .map(|name| ObjectRef::new(name))
        .collect()
}

/// Runs the Tenant controller until `shutdown` resolves; reconciles in flight finish first.
pub async fn run(
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let operator_namespace = ctx.settings.operator_namespace.clone();
    let (store, writer) = reflector::store::<CachedTenant>();
    let listed = || watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let tenants = watcher(Api::<CachedTenant>::all(client.clone()), listed())
        .default_backoff()
        .modify(identity_only)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(tenants, store.clone());
    let managed = || listed().labels(MANAGED_SELECTOR);
    macro_rules! owned {
        ($controller:expr, $kind:ty) => {
            $controller.watches_stream(
                watcher(
                    Api::<PartialObjectMeta<$kind>>::all(client.clone()),
                    managed(),
                )
                .default_backoff()
                .touched_objects(),
                owning_tenants,
            )
        };
    }
    macro_rules! in_tenant_namespace {
        ($controller:expr, $kind:ty) => {{
            let ctx = ctx.clone();
            $controller.watches_stream(
                watcher(
                    Api::<PartialObjectMeta<$kind>>::all(client.clone()),
                    listed(),
                )
                .default_backoff()
                .touched_objects(),
                move |obj| in_namespace(&ctx.index, obj.namespace()),
            )
        }};
    }
    let controller = owned!(controller, Namespace);
    let controller = owned!(controller, ResourceQuota);
    let controller = owned!(controller, LimitRange);
    let controller = owned!(controller, NetworkPolicy);
    let controller = owned!(controller, ServiceAccount);
    let controller = owned!(controller, Secret);
    let controller = owned!(controller, ConfigMap);
    let controller = owned!(controller, Deployment);
    let controller = owned!(controller, Service);
    let controller = owned!(controller, PodDisruptionBudget);
    let controller = owned!(controller, HorizontalPodAutoscaler);
    let controller = owned!(controller, Ingress);
    let controller = in_tenant_namespace!(controller, Agent);
    let controller = in_tenant_namespace!(controller, Tool);
    let controller = in_tenant_namespace!(controller, Workflow);
    let controller = in_tenant_namespace!(controller, FeatureFlag);
    // Secrets Tools read header values from: one appearing or gaining a key changes the
    // Tool's Ready condition.
    let controller = in_tenant_namespace!(controller, Secret);
    let secrets_ctx = ctx.clone();
    let controller = controller.watches_stream(
        watcher(
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &operator_namespace),
            listed(),
        )
        .default_backoff()
        .touched_objects(),
        move |secret| {
            secrets_ctx
                .index
                .tenants_using_secret(&secret.name_any())
                .iter()
                .map(|name| ObjectRef::<CachedTenant>::new(name))
                .collect::<Vec<_>>()
        },
    );
    let metrics = ctx.metrics.clone();
    controller
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_cached, error_policy, ctx)
        .for_each(|result| {
            metrics
                .tenants
                .set(i64::try_from(store.state().len()).unwrap_or(i64::MAX));
            // Reconcile results are reported in `reconcile`; what arrives here as an error
            // is the controller's own trouble (a watch failing, an object gone).
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller");
            }
            futures::future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::core::PartialObjectMetaExt as _;

    #[test]
    fn cached_tenants_keep_only_what_identifies_them() {
        let mut t = ObjectMeta {
            name: Some("acme".to_owned()),
            uid: Some("3f1c".to_owned()),
            resource_version: Some("42".to_owned()),
            generation: Some(3),
            managed_fields: Some(vec![Default::default(), Default::default()]),
            annotations: Some(
                [(
                    "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                    "{\"spec\":{}}".to_owned(),
                )]
                .into(),
            ),
            labels: Some([("argocd.argoproj.io/instance".to_owned(), "acme".to_owned())].into()),
            finalizers: Some(vec!["agentry.dev/cleanup".to_owned()]),
            ..ObjectMeta::default()
        }
        .into_response_partial::<Tenant>();
        identity_only(&mut t);
        assert_eq!(
            t.metadata,
            ObjectMeta {
                name: Some("acme".to_owned()),
                ..ObjectMeta::default()
            }
        );
    }

    #[test]
    fn owned_objects_map_to_the_key_of_their_cluster_scoped_tenant() {
        let tenant = Tenant::new("acme", Default::default());
        let owner = |kind: &str, api_version: &str| OwnerReference {
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
            name: "acme".to_owned(),
            uid: "3f1c".to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        };
        let child = ObjectMeta {
            name: Some("runtime".to_owned()),
            namespace: Some("tenant-acme".to_owned()),
            owner_references: Some(vec![
                owner("Tenant", "agentry.dev/v1alpha1"),
                owner("Tenant", "example.com/v1"),
                owner("ReplicaSet", "apps/v1"),
            ]),
            ..ObjectMeta::default()
        }
        .into_response_partial::<Deployment>();
        let keys = owning_tenants(child);
        // Equal as scheduler keys (name and namespace) to the Tenant's own.
        assert_eq!(
            keys,
            [ObjectRef::<CachedTenant>::from_obj(
                &tenant.metadata.clone().into_response_partial::<Tenant>()
            )]
        );
        assert_eq!(keys[0].namespace, None);
    }

    #[test]
    fn objects_map_to_the_tenant_recorded_for_their_namespace() {
        let index = TenantIndex::default();
        index.record(&Tenant::new("acme", Default::default()));
        let names = |ns: Option<&str>| {
            in_namespace(&index, ns.map(str::to_owned))
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Some("tenant-acme")), ["acme"]);
        assert!(names(Some("tenant-globex")).is_empty());
        assert!(
            names(None).is_empty(),
            "cluster-scoped objects map to no Tenant"
        );
    }
}
