//! What a Tenant becomes: pure functions from the Tenant, the operator settings, the compiled
//! bundle and the provisioned database role to the Kubernetes objects the operator applies.
//! Nothing here talks to a network; every builder is unit-tested on its own.

pub mod bundle;
pub mod ingress;
pub mod namespace;
pub mod network;
pub mod runtime;
pub mod secrets;
pub mod tool_secrets;

use std::collections::BTreeMap;

use agentry_crds::common::TENANT_LABEL;
use agentry_crds::{RuntimeBundle, Tenant};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource as _, ResourceExt as _};

use crate::database::Provisioned;
use crate::settings::Settings;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "agentry-operator";
/// Label every object the operator creates carries (and its watches select on).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "agentry-operator";
/// Label selector of the objects the operator manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=agentry-operator";
/// Name of the runtime's Deployment, Service, ServiceAccount, PDB, HPA and Ingress.
pub const RUNTIME: &str = "agentry-runtime";
/// ConfigMap holding the compiled bundle.
pub const BUNDLE_CONFIGMAP: &str = "agentry-bundle";
/// Key of the bundle in [`BUNDLE_CONFIGMAP`].
pub const BUNDLE_KEY: &str = "bundle.json";
/// Secret holding the tenant's database credentials and bootstrap admin API key.
pub const CREDENTIALS_SECRET: &str = "agentry-runtime-credentials";
/// Secret holding copies of the provider API keys the tenant declares.
pub const PROVIDER_KEYS_SECRET: &str = "agentry-provider-keys";
/// Port the runtime listens on.
pub const HTTP_PORT: i32 = 8080;
/// Port of the runtime Service.
pub const SERVICE_PORT: i32 = 80;

/// The Tenant as every builder sees it: its name, namespace and owner reference.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Tenant name.
    pub name: String,
    /// Tenant namespace.
    pub namespace: String,
    /// Controller reference to the Tenant, set on every object so that the Tenant
    /// controller is told of changes and Kubernetes collects them after the Tenant.
    pub reference: OwnerReference,
}

impl Owner {
    /// The owner facts of a Tenant.
    pub fn of(tenant: &Tenant) -> Self {
        Self {
            name: tenant.name_any(),
            namespace: tenant.namespace_name(),
            reference: OwnerReference {
                api_version: Tenant::api_version(&()).into_owned(),
                kind: Tenant::kind(&()).into_owned(),
                name: tenant.name_any(),
                uid: tenant.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    /// Labels of every object of the tenant.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TENANT_LABEL.to_owned(), self.name.clone()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ("app.kubernetes.io/part-of".to_owned(), "agentry".to_owned()),
        ])
    }

    /// Labels that select the runtime's pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), RUNTIME.to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
        ])
    }

    /// Labels of the runtime's objects and pods.
    pub fn runtime_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.extend(self.selector());
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            "runtime".to_owned(),
        );
        labels
    }

    /// Metadata of a namespaced object of the tenant.
    pub fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// What the builders take.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The Tenant.
    pub tenant: &'a Tenant,
    /// Operator settings.
    pub settings: &'a Settings,
    /// The compiled bundle.
    pub bundle: &'a RuntimeBundle,
    /// Its canonical JSON, what the ConfigMap holds.
    pub bundle_json: &'a str,
    /// The tenant's database role and credentials.
    pub database: &'a Provisioned,
    /// Provider API keys by projected key name (see [`secrets::provider_key_name`]).
    pub provider_keys: &'a BTreeMap<String, ByteString>,
}

/// The namespace and its guard rails; they need nothing from the database.
#[derive(Debug, Clone)]
pub struct GuardRails {
    /// The namespace.
    pub namespace: Namespace,
    /// Its ResourceQuota.
    pub quota: ResourceQuota,
    /// Its LimitRange.
    pub limits: LimitRange,
    /// Its NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    /// The runtime's ServiceAccount.
    pub service_account: ServiceAccount,
}

/// Everything else: credentials, bundle and the runtime.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Database credentials and bootstrap admin key.
    pub credentials: Secret,
    /// Projected provider API keys.
    pub provider_keys: Secret,
    /// The bundle.
    pub bundle: ConfigMap,
    /// The runtime.
    pub deployment: Deployment,
    /// Its Service.
    pub service: Service,
    /// Its PodDisruptionBudget.
    pub pdb: PodDisruptionBudget,
    /// Its autoscaler, when `spec.runtime.autoscaling` is set and the tenant is not suspended.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Its Ingress, when the operator has a base domain.
    pub ingress: Option<Ingress>,
}

/// Every object of a tenant, in the order they are applied.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Applied first.
    pub guard_rails: GuardRails,
    /// Applied once the database role exists.
    pub workload: Workload,
}

/// Builds the namespace and its guard rails.
pub fn guard_rails(tenant: &Tenant, settings: &Settings, bundle: &RuntimeBundle) -> GuardRails {
    let owner = Owner::of(tenant);
    GuardRails {
        namespace: namespace::namespace(&owner),
        quota: namespace::resource_quota(&owner, tenant),
        limits: namespace::limit_range(&owner),
        network_policies: network::policies(&owner, settings, bundle),
        service_account: namespace::service_account(&owner),
    }
}

/// Builds the workload objects.
pub fn workload(inputs: &Inputs<'_>) -> Workload {
    let owner = Owner::of(inputs.tenant);
    Workload {
        credentials: secrets::credentials(&owner, inputs.settings, inputs.database),
        provider_keys: secrets::provider_keys(&owner, inputs.provider_keys),
        bundle: bundle::config_map(&owner, inputs.bundle, inputs.bundle_json),
        deployment: runtime::deployment(&owner, inputs.tenant, inputs.settings, inputs.bundle),
        service: runtime::service(&owner),
        pdb: runtime::pod_disruption_budget(&owner),
        hpa: runtime::autoscaler(&owner, inputs.tenant),
        ingress: inputs
            .settings
            .ingress
            .as_ref()
            .map(|ingress| ingress::ingress(&owner, ingress)),
    }
}

/// Builds every object of a tenant.
pub fn desired(inputs: &Inputs<'_>) -> Desired {
    Desired {
        guard_rails: guard_rails(inputs.tenant, inputs.settings, inputs.bundle),
        workload: workload(inputs),
    }
}

/// URL the tenant's end users reach: the Ingress host, else the in-cluster Service.
pub fn endpoint(tenant: &Tenant, settings: &Settings) -> String {
    let owner = Owner::of(tenant);
    match &settings.ingress {
        Some(ingress) => ingress::endpoint(&owner, ingress),
        None => format!("http://{RUNTIME}.{}.svc", owner.namespace),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Tenants for builder tests: a default one and a fully specified one.

    use agentry_crds::Tenant;
    use agentry_crds::bundle::{BundleSources, compile};
    use agentry_crds::common::SecretKeyRef;
    use agentry_crds::tenant::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    use crate::database::Provisioned;

    /// A Tenant with nothing but a name.
    pub(crate) fn tenant() -> Tenant {
        let mut t = Tenant::new("acme", TenantSpec::default());
        t.metadata.uid = Some("0b8c3a52-0000-4000-8000-000000000001".to_owned());
        t.metadata.generation = Some(1);
        t
    }

    /// A Tenant with every field the builders read.
    pub(crate) fn full_tenant() -> Tenant {
        let mut t = tenant();
        t.spec = TenantSpec {
            display_name: Some("Acme Corp".to_owned()),
            plan: Some("enterprise".to_owned()),
            namespace: Some("acme-prod".to_owned()),
            runtime: Some(RuntimeSpec {
                replicas: Some(3),
                autoscaling: Some(AutoscalingSpec {
                    min_replicas: Some(2),
                    max_replicas: 6,
                    target_cpu_utilization_percentage: Some(60),
                }),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_owned(), Quantity("250m".to_owned())),
                        ("memory".to_owned(), Quantity("256Mi".to_owned())),
                    ])),
                    limits: Some(BTreeMap::from([(
                        "memory".to_owned(),
                        Quantity("1Gi".to_owned()),
                    )])),
                    ..Default::default()
                }),
                image: Some("registry.example/agentry-runtime:custom".to_owned()),
                max_in_flight: Some(64),
                http_front_thread: Some(true),
                background_thread: Some(true),
            }),
            providers: vec![
                ProviderSpec {
                    name: "openai".to_owned(),
                    type_: ProviderType::Openai,
                    base_url: Some("https://api.openai.com/v1".to_owned()),
                    api_key_secret_ref: Some(SecretKeyRef {
                        name: "openai-key".to_owned(),
                        key: "api-key".to_owned(),
                    }),
                    timeout_ms: None,
                },
                ProviderSpec {
                    name: "offline".to_owned(),
                    type_: ProviderType::Builtin,
                    base_url: None,
                    api_key_secret_ref: None,
                    timeout_ms: None,
                },
            ],
            network: Some(NetworkSpec {
                egress_allowlist: vec!["api.partner.example".to_owned()],
            }),
            quota: Some(QuotaSpec {
                cpu: Some(Quantity("8".to_owned())),
                memory: Some(Quantity("16Gi".to_owned())),
                pods: Some(Quantity("30".to_owned())),
            }),
            on_delete: OnDelete::Delete,
            ..TenantSpec::default()
        };
        t
    }

    /// The compiled bundle of a tenant with no other objects.
    pub(crate) fn bundle(t: &Tenant) -> agentry_crds::RuntimeBundle {
        compile(&BundleSources::new(t.clone())).bundle
    }

    /// Credentials as a provisioner returns them.
    pub(crate) fn provisioned() -> Provisioned {
        Provisioned {
            tenant_id: Uuid::from_u128(0x42),
            role: "agentry_tenant_acme".to_owned(),
            password: "Pa55word0123456789abcdefABCDEF01".to_owned(),
            admin_api_key: "agk_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
                .to_owned(),
            password_rotated: false,
            admin_key_created: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::settings;

    #[test]
    fn every_object_is_owned_by_the_tenant_and_labelled() {
        let tenant = fixtures::full_tenant();
        let mut settings = settings();
        settings.ingress = Some(crate::settings::IngressSettings {
            class: None,
            base_domain: "agentry.example.com".to_owned(),
            tls: false,
            annotations: BTreeMap::new(),
        });
        let bundle = fixtures::bundle(&tenant);
        let db = fixtures::provisioned();
        let keys = BTreeMap::new();
        let d = desired(&Inputs {
            tenant: &tenant,
            settings: &settings,
            bundle: &bundle,
            bundle_json: &bundle.to_canonical_json(),
            database: &db,
            provider_keys: &keys,
        });
        let (g, w) = (&d.guard_rails, &d.workload);
        let mut metas: Vec<&ObjectMeta> = vec![
            &g.namespace.metadata,
            &g.quota.metadata,
            &g.limits.metadata,
            &g.service_account.metadata,
            &w.credentials.metadata,
            &w.provider_keys.metadata,
            &w.bundle.metadata,
            &w.deployment.metadata,
            &w.service.metadata,
            &w.pdb.metadata,
        ];
        metas.extend(g.network_policies.iter().map(|p| &p.metadata));
        let hpa = w.hpa.as_ref().unwrap();
        metas.push(&hpa.metadata);
        let ingress = w.ingress.as_ref().unwrap();
        metas.push(&ingress.metadata);
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "Tenant");
            assert_eq!(owner.api_version, "agentry.dev/v1alpha1");
            assert_eq!(owner.uid, tenant.metadata.uid.clone().unwrap());
            assert_eq!(owner.controller, Some(true));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[TENANT_LABEL], "acme");
            assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
            if meta.name.as_deref() != Some("acme-prod") {
                assert_eq!(
                    meta.namespace.as_deref(),
                    Some("acme-prod"),
                    "{:?}",
                    meta.name
                );
            }
        }
    }

    #[test]
    fn endpoint_is_the_ingress_host_or_the_service() {
        let tenant = fixtures::tenant();
        let mut settings = settings();
        assert_eq!(
            endpoint(&tenant, &settings),
            "http://agentry-runtime.tenant-acme.svc"
        );
        settings.ingress = Some(crate::settings::IngressSettings {
            class: None,
            base_domain: "agentry.example.com".to_owned(),
            tls: true,
            annotations: BTreeMap::new(),
        });
        assert_eq!(
            endpoint(&tenant, &settings),
            "https://acme.agentry.example.com"
        );
    }
}
