//! The controller's watches and how each change finds its Tenant.
//!
//! Owned objects are watched by label (`app.kubernetes.io/managed-by=agentry-operator`) and
//! mapped through their owner reference. Agents, Tools, Workflows, FeatureFlags and Secrets
//! (those Tools read header values from) are mapped to the Tenant whose namespace they live
//! in, and provider key Secrets in the
//! operator's namespace to every Tenant that names them, both by looking the Tenants up in
//! the controller's own cache. Everything but the Tenants is watched as metadata only: the
//! watches only trigger, reconcile reads what it needs, and bundles and Secrets stay out of
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
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};

use super::{Context, error_policy, reconcile};
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

/// Annotation in which a client-side `kubectl apply` keeps a copy of what it applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a watched Tenant what reconcile never reads, before it enters the cache: its
/// managed fields and `kubectl`'s last-applied copy. They are most of a Tenant's size (a
/// Tenant of the Acme example takes about 32 KiB of memory with its managed fields and 6 KiB
/// without; see docs/benchmarks.md), and the cache holds every Tenant.
pub fn slim(tenant: &mut Tenant) {
    tenant.managed_fields_mut().clear();
    if let Some(annotations) = tenant.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Whether `namespace` is the tenant's (`spec.namespace`, else `tenant-<name>`), without
/// allocating: it runs for every Tenant on a cache miss.
fn lives_in(tenant: &Tenant, namespace: &str) -> bool {
    match &tenant.spec.namespace {
        Some(ns) => ns == namespace,
        None => namespace.strip_prefix("tenant-") == tenant.metadata.name.as_deref(),
    }
}

/// Tenants whose namespace is `namespace`.
pub fn tenants_in_namespace(tenants: &[Arc<Tenant>], namespace: &str) -> Vec<ObjectRef<Tenant>> {
    tenants
        .iter()
        .filter(|t| lives_in(t, namespace))
        .map(|t| ObjectRef::from_obj(t.as_ref()))
        .collect()
}

/// The Tenant whose namespace is `namespace`, from the controller's cache. Every object event
/// in every namespace asks, so the usual case, a tenant in its default namespace
/// `tenant-<name>`, is one lookup; any other namespace is one pass over the cache without
/// copying it (validation keeps a namespace to one Tenant).
pub fn tenant_of_namespace(
    tenants: &reflector::Store<Tenant>,
    namespace: &str,
) -> Option<ObjectRef<Tenant>> {
    let by_default_name = namespace
        .strip_prefix("tenant-")
        .and_then(|name| tenants.get(&ObjectRef::new(name)))
        .filter(|t| lives_in(t, namespace));
    by_default_name
        .or_else(|| tenants.find(|t| lives_in(t, namespace)))
        .map(|t| ObjectRef::from_obj(t.as_ref()))
}

/// Tenants with a provider whose API key is in the Secret `name`.
pub fn tenants_using_secret(tenants: &[Arc<Tenant>], name: &str) -> Vec<ObjectRef<Tenant>> {
    tenants
        .iter()
        .filter(|t| super::fetch::provider_secret_names(t).contains(name))
        .map(|t| ObjectRef::from_obj(t.as_ref()))
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
    let (store, writer) = reflector::store();
    let listed = || watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let tenants = watcher(Api::<Tenant>::all(client.clone()), listed())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(tenants, store.clone());
    let managed = || listed().labels(MANAGED_SELECTOR);
    macro_rules! owned {
        ($controller:expr, $kind:ty) => {
            $controller.owns_stream(
                watcher(
                    Api::<PartialObjectMeta<$kind>>::all(client.clone()),
                    managed(),
                )
                .default_backoff()
                .touched_objects(),
            )
        };
    }
    macro_rules! in_tenant_namespace {
        ($controller:expr, $kind:ty) => {{
            let store = store.clone();
            $controller.watches_stream(
                watcher(
                    Api::<PartialObjectMeta<$kind>>::all(client.clone()),
                    listed(),
                )
                .default_backoff()
                .touched_objects(),
                move |obj| tenant_of_namespace(&store, &obj.namespace().unwrap_or_default()),
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
    let secrets_store = store.clone();
    let controller = controller.watches_stream(
        watcher(
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &operator_namespace),
            listed(),
        )
        .default_backoff()
        .touched_objects(),
        move |secret| tenants_using_secret(&secrets_store.state(), &secret.name_any()),
    );
    let metrics = ctx.metrics.clone();
    controller
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
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
    use agentry_crds::common::SecretKeyRef;
    use agentry_crds::tenant::{ProviderSpec, ProviderType, TenantSpec};

    fn tenant(name: &str, namespace: Option<&str>, secret: Option<&str>) -> Arc<Tenant> {
        let mut spec = TenantSpec {
            namespace: namespace.map(str::to_owned),
            ..TenantSpec::default()
        };
        if let Some(secret) = secret {
            spec.providers.push(ProviderSpec {
                name: "openai".to_owned(),
                type_: ProviderType::Openai,
                base_url: Some("https://api.openai.com/v1".to_owned()),
                api_key_secret_ref: Some(SecretKeyRef {
                    name: secret.to_owned(),
                    key: "api-key".to_owned(),
                }),
                timeout_ms: None,
            });
        }
        Arc::new(Tenant::new(name, spec))
    }

    #[test]
    fn cached_tenants_lose_managed_fields_and_the_last_applied_copy_only() {
        let mut t = Arc::unwrap_or_clone(tenant("acme", None, Some("openai-key")));
        t.metadata.managed_fields = Some(vec![Default::default(), Default::default()]);
        t.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_owned(), "{\"spec\":{}}".to_owned()),
                ("team".to_owned(), "support".to_owned()),
            ]
            .into(),
        );
        t.metadata.finalizers = Some(vec!["agentry.dev/cleanup".to_owned()]);
        let before = t.clone();
        slim(&mut t);
        assert!(t.metadata.managed_fields.unwrap_or_default().is_empty());
        assert_eq!(
            t.metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .keys()
                .collect::<Vec<_>>(),
            ["team"]
        );
        assert_eq!(t.metadata.finalizers, before.metadata.finalizers);
        assert_eq!(t.spec, before.spec);
    }

    fn names(refs: Vec<ObjectRef<Tenant>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn objects_map_to_the_tenant_of_their_namespace() {
        let tenants = [
            tenant("acme", None, None),
            tenant("globex", Some("globex-prod"), None),
        ];
        assert_eq!(
            names(tenants_in_namespace(&tenants, "tenant-acme")),
            ["acme"]
        );
        assert_eq!(
            names(tenants_in_namespace(&tenants, "globex-prod")),
            ["globex"]
        );
        assert!(tenants_in_namespace(&tenants, "tenant-globex").is_empty());
        assert!(tenants_in_namespace(&tenants, "default").is_empty());
    }

    #[test]
    fn the_cache_finds_the_tenant_of_a_namespace_by_name_or_by_spec() {
        let (store, mut writer) = reflector::store::<Tenant>();
        for t in [
            tenant("acme", None, None),
            tenant("globex", Some("globex-prod"), None),
            tenant("initech", Some("tenant-umbrella"), None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(Arc::unwrap_or_clone(t)));
        }
        let name = |ns: &str| tenant_of_namespace(&store, ns).map(|r| r.name);
        assert_eq!(name("tenant-acme").as_deref(), Some("acme"));
        assert_eq!(name("globex-prod").as_deref(), Some("globex"));
        assert_eq!(name("tenant-globex"), None, "globex moved to globex-prod");
        assert_eq!(name("tenant-umbrella").as_deref(), Some("initech"));
        assert_eq!(name("kube-system"), None);
    }

    #[test]
    fn provider_secrets_map_to_every_tenant_naming_them() {
        let tenants = [
            tenant("acme", None, Some("openai-key")),
            tenant("globex", None, Some("openai-key")),
            tenant("initech", None, Some("other-key")),
            tenant("umbrella", None, None),
        ];
        assert_eq!(
            names(tenants_using_secret(&tenants, "openai-key")),
            ["acme", "globex"]
        );
        assert_eq!(
            names(tenants_using_secret(&tenants, "other-key")),
            ["initech"]
        );
        assert!(tenants_using_secret(&tenants, "unrelated").is_empty());
    }
}
