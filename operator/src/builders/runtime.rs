//! The runtime: Deployment, Service, PodDisruptionBudget and the optional autoscaler.

use std::collections::BTreeMap;

use agentry_crds::tenant::RuntimeSpec;
use agentry_crds::{RuntimeBundle, Tenant};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::secrets::{DATABASE_URL_KEY, PROVIDER_KEYS_DIR, provider_key_name};
use super::tool_secrets::{self, TOOL_SECRETS_DIR};
use super::{
    BUNDLE_CONFIGMAP, BUNDLE_KEY, CREDENTIALS_SECRET, HTTP_PORT, Owner, PROVIDER_KEYS_SECRET,
    RUNTIME, SERVICE_PORT,
};
use crate::settings::Settings;

/// Directory the bundle ConfigMap is mounted at.
pub const BUNDLE_DIR: &str = "/etc/agentry/bundle";
/// User and group the runtime runs as (the distroless `nonroot` user).
pub const RUNTIME_UID: i64 = 65532;
/// CPU utilisation an autoscaler aims for when the spec names none.
pub const DEFAULT_TARGET_CPU: i32 = 70;

/// Replicas the Deployment asks for: zero when suspended, none when an autoscaler owns the
/// count, else `spec.runtime.replicas` (default 1).
pub fn replicas(tenant: &Tenant) -> Option<i32> {
    let runtime = tenant.spec.runtime.clone().unwrap_or_default();
    if tenant.spec.suspended {
        Some(0)
    } else if runtime.autoscaling.is_some() {
        None
    } else {
        Some(runtime.replicas.unwrap_or(1))
    }
}

/// How many replicas share the tenant's rate limits. Under an autoscaler it is the maximum,
/// so that the tenant never exceeds its limits (it may get less while scaled down).
pub fn rate_limit_shards(tenant: &Tenant) -> i32 {
    let runtime = tenant.spec.runtime.clone().unwrap_or_default();
    let shards = match (&runtime.autoscaling, replicas(tenant)) {
        _ if tenant.spec.suspended => 1,
        (Some(a), _) => a.max_replicas,
        (None, r) => r.unwrap_or(1),
    };
    shards.max(1)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// The runtime settings a Tenant's `spec.runtime` sets, as the runtime's environment.
fn tuning_env(runtime: &RuntimeSpec) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    if let Some(cap) = runtime.max_in_flight {
        vars.push(env("AGENTRY_MAX_IN_FLIGHT", cap.to_string()));
    }
    if let Some(front) = runtime.http_front_thread {
        vars.push(env("AGENTRY_HTTP_FRONT_THREAD", front.to_string()));
    }
    if let Some(background) = runtime.background_thread {
        vars.push(env("AGENTRY_BACKGROUND_THREAD", background.to_string()));
    }
    vars
}

fn container(tenant: &Tenant, settings: &Settings, tool_secrets: bool) -> Container {
    let runtime = tenant.spec.runtime.clone().unwrap_or_default();
    let tuning = tuning_env(&runtime);
    let image = runtime
        .image
        .unwrap_or_else(|| settings.runtime_image.clone());
    Container {
        name: "runtime".to_owned(),
        image: Some(image),
        image_pull_policy: Some(settings.runtime_image_pull_policy.clone()),
        command: Some(vec!["agentry-runtime".to_owned()]),
        args: Some(vec![
            "serve".to_owned(),
            "--bundle".to_owned(),
            format!("{BUNDLE_DIR}/{BUNDLE_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(
            [
                EnvVar {
                    name: "AGENTRY_DATABASE_URL".to_owned(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: CREDENTIALS_SECRET.to_owned(),
                            key: DATABASE_URL_KEY.to_owned(),
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                },
                env("AGENTRY_NATS_URL", settings.nats_url.clone()),
                env("AGENTRY_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
                env(
                    "AGENTRY_RATE_LIMIT_SHARDS",
                    rate_limit_shards(tenant).to_string(),
                ),
                env("AGENTRY_PROVIDER_SECRETS_DIR", PROVIDER_KEYS_DIR),
                env("AGENTRY_SECRETS_DIR", TOOL_SECRETS_DIR),
                env("AGENTRY_LOG_JSON", "true"),
                EnvVar {
                    name: "AGENTRY_REPLICA_ID".to_owned(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".to_owned(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                },
            ]
            .into_iter()
            .chain(tuning)
            .collect(),
        ),
        resources: Some(runtime.resources.unwrap_or_else(default_resources)),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUNTIME_UID),
            run_as_group: Some(RUNTIME_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        // Directory mounts, never subPath: a subPath mount never sees ConfigMap or Secret
        // updates, and the runtime hot-reloads both.
        volume_mounts: Some(volume_mounts(tool_secrets)),
        ..Container::default()
    }
}

fn volume_mounts(tool_secrets: bool) -> Vec<VolumeMount> {
    let mut mounts = vec![
        VolumeMount {
            name: "bundle".to_owned(),
            mount_path: BUNDLE_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "provider-keys".to_owned(),
            mount_path: PROVIDER_KEYS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    if tool_secrets {
        mounts.push(tool_secrets::mount());
    }
    mounts
}

/// `<secret>/<key>` files of the provider keys the tenant refers to. The list is part of the
/// pod template, so adding or removing a reference rolls the pods; a rotated key's value
/// reaches running pods without a restart. `optional`: a key that is missing leaves its file
/// out instead of keeping the pod from starting (BundleReady names it).
fn provider_key_items(tenant: &Tenant) -> Option<Vec<KeyToPath>> {
    let references: std::collections::BTreeSet<_> = tenant
        .spec
        .providers
        .iter()
        .filter_map(|p| p.api_key_secret_ref.clone())
        .collect();
    (!references.is_empty()).then(|| {
        references
            .iter()
            .map(|r| KeyToPath {
                key: provider_key_name(r),
                path: format!("{}/{}", r.name, r.key),
                mode: None,
            })
            .collect()
    })
}

fn volumes(tenant: &Tenant, tool_secrets: Option<Volume>) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "bundle".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: BUNDLE_CONFIGMAP.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "provider-keys".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(PROVIDER_KEYS_SECRET.to_owned()),
                items: provider_key_items(tenant),
                optional: Some(true),
                default_mode: Some(0o440),
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(tool_secrets);
    volumes
}

/// The runtime Deployment. The bundle only decides which tool Secrets are mounted; its
/// content reaches the pods through the ConfigMap, so a new bundle with the same references
/// builds the same template.
pub fn deployment(
    owner: &Owner,
    tenant: &Tenant,
    settings: &Settings,
    bundle: &RuntimeBundle,
) -> Deployment {
    let tool_secrets = tool_secrets::volume(bundle);
    let mut meta = owner.meta(RUNTIME);
    meta.labels = Some(owner.runtime_labels());
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: replicas(tenant),
            selector: LabelSelector {
                match_labels: Some(owner.selector()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(owner.runtime_labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(RUNTIME.to_owned()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUNTIME_UID),
                        run_as_group: Some(RUNTIME_UID),
                        fs_group: Some(RUNTIME_UID),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container(tenant, settings, tool_secrets.is_some())],
                    volumes: Some(volumes(tenant, tool_secrets)),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The runtime Service (port 80 to the pods' `http` port).
pub fn service(owner: &Owner) -> Service {
    let mut meta = owner.meta(RUNTIME);
    meta.labels = Some(owner.runtime_labels());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(owner.selector()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one runtime pod down for voluntary disruptions. `maxUnavailable` (not
/// `minAvailable`) so that a single-replica tenant never blocks a node drain.
pub fn pod_disruption_budget(owner: &Owner) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(RUNTIME),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The CPU autoscaler, when `spec.runtime.autoscaling` is set and the tenant is not
/// suspended (an autoscaler would scale a suspended tenant back up).
pub fn autoscaler(owner: &Owner, tenant: &Tenant) -> Option<HorizontalPodAutoscaler> {
    if tenant.spec.suspended {
        return None;
    }
    let scaling = tenant.spec.runtime.as_ref()?.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: owner.meta(RUNTIME),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: RUNTIME.to_owned(),
            },
            min_replicas: Some(scaling.min_replicas.unwrap_or(1)),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(
                            scaling
                                .target_cpu_utilization_percentage
                                .unwrap_or(DEFAULT_TARGET_CPU),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{bundle, full_tenant, tenant};
    use crate::settings::tests::settings;

    fn pod(d: &Deployment) -> PodSpec {
        d.spec.clone().unwrap().template.spec.unwrap()
    }

    fn env_value(c: &Container, name: &str) -> Option<String> {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn default_deployment_runs_the_operator_image_with_one_replica() {
        let t = tenant();
        let d = deployment(&Owner::of(&t), &t, &settings(), &bundle(&t));
        assert_eq!(d.metadata.name.as_deref(), Some(RUNTIME));
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
        let pod = pod(&d);
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example/agentry-runtime:1.2.3")
        );
        assert_eq!(c.command.clone().unwrap(), ["agentry-runtime"]);
        assert_eq!(
            c.args.clone().unwrap(),
            ["serve", "--bundle", "/etc/agentry/bundle/bundle.json"]
        );
        assert_eq!(
            env_value(c, "AGENTRY_NATS_URL").unwrap(),
            "nats://nats.agentry-system.svc:4222"
        );
        assert_eq!(env_value(c, "AGENTRY_RATE_LIMIT_SHARDS").unwrap(), "1");
        // Unset in the Tenant: the runtime's own defaults apply.
        assert_eq!(env_value(c, "AGENTRY_MAX_IN_FLIGHT"), None);
        assert_eq!(env_value(c, "AGENTRY_HTTP_FRONT_THREAD"), None);
        assert_eq!(env_value(c, "AGENTRY_BACKGROUND_THREAD"), None);
        let db = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "AGENTRY_DATABASE_URL")
            .unwrap();
        let secret = db
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            (CREDENTIALS_SECRET, DATABASE_URL_KEY)
        );
        assert_eq!(c.resources, Some(default_resources()));
        let liveness = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        let readiness = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        assert_eq!(pod.service_account_name.as_deref(), Some(RUNTIME));
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn runtime_is_locked_down_for_pod_security_restricted() {
        let t = tenant();
        let pod = pod(&deployment(&Owner::of(&t), &t, &settings(), &bundle(&t)));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn bundle_is_a_directory_mount_and_the_template_has_no_bundle_hash() {
        let t = tenant();
        let d = deployment(&Owner::of(&t), &t, &settings(), &bundle(&t));
        let pod = pod(&d);
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let bundle = mounts.iter().find(|m| m.name == "bundle").unwrap();
        assert_eq!(bundle.mount_path, BUNDLE_DIR);
        assert!(bundle.sub_path.is_none());
        assert!(mounts.iter().all(|m| m.sub_path.is_none()));
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "bundle")
            .unwrap();
        assert_eq!(volume.config_map.unwrap().name, BUNDLE_CONFIGMAP);
        let template = d.spec.unwrap().template.metadata.unwrap();
        assert!(template.annotations.is_none());
    }

    #[test]
    fn fully_specified_tenant_overrides_image_resources_and_autoscales() {
        let t = full_tenant();
        let owner = Owner::of(&t);
        let d = deployment(&owner, &t, &settings(), &bundle(&t));
        // The autoscaler owns the replica count.
        assert_eq!(d.spec.as_ref().unwrap().replicas, None);
        let c = &pod(&d).containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example/agentry-runtime:custom")
        );
        assert_eq!(env_value(c, "AGENTRY_RATE_LIMIT_SHARDS").unwrap(), "6");
        assert_eq!(env_value(c, "AGENTRY_MAX_IN_FLIGHT").unwrap(), "64");
        assert_eq!(env_value(c, "AGENTRY_HTTP_FRONT_THREAD").unwrap(), "true");
        assert_eq!(env_value(c, "AGENTRY_BACKGROUND_THREAD").unwrap(), "true");
        let requests = c.resources.clone().unwrap().requests.unwrap();
        assert_eq!(requests["cpu"], Quantity("250m".to_owned()));
        let hpa = autoscaler(&owner, &t).unwrap().spec.unwrap();
        assert_eq!(hpa.min_replicas, Some(2));
        assert_eq!(hpa.max_replicas, 6);
        assert_eq!(hpa.scale_target_ref.name, RUNTIME);
        let metric = &hpa.metrics.unwrap()[0];
        assert_eq!(
            metric.resource.as_ref().unwrap().target.average_utilization,
            Some(60)
        );
        assert!(autoscaler(&Owner::of(&tenant()), &tenant()).is_none());
    }

    #[test]
    fn provider_keys_are_files_named_secret_slash_key() {
        let t = full_tenant();
        let d = deployment(&Owner::of(&t), &t, &settings(), &bundle(&t));
        let pod = pod(&d);
        assert_eq!(
            env_value(&pod.containers[0], "AGENTRY_PROVIDER_SECRETS_DIR").unwrap(),
            "/etc/agentry/providers"
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "provider-keys")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(volume.optional, Some(true));
        let items = volume.items.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].key, "openai-key_api-key");
        assert_eq!(items[0].path, "openai-key/api-key");
        let plain = deployment(
            &Owner::of(&tenant()),
            &tenant(),
            &settings(),
            &bundle(&tenant()),
        );
        let none = plain.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert!(
            none.iter()
                .find(|v| v.name == "provider-keys")
                .unwrap()
                .secret
                .as_ref()
                .unwrap()
                .items
                .is_none()
        );
    }

    #[test]
    fn tool_secrets_are_mounted_only_when_a_tool_references_one() {
        let t = tenant();
        let plain = pod(&deployment(&Owner::of(&t), &t, &settings(), &bundle(&t)));
        let c = &plain.containers[0];
        assert_eq!(
            env_value(c, "AGENTRY_SECRETS_DIR").unwrap(),
            "/etc/agentry/secrets"
        );
        let names = |p: &PodSpec| -> Vec<String> {
            p.volumes
                .clone()
                .unwrap()
                .into_iter()
                .map(|v| v.name)
                .collect()
        };
        assert!(!names(&plain).contains(&"tool-secrets".to_owned()));

        let b = tool_secrets::tests::bundle_with_tools();
        let with = pod(&deployment(&Owner::of(&t), &t, &settings(), &b));
        assert!(names(&with).contains(&"tool-secrets".to_owned()));
        let mount = with.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == "tool-secrets")
            .unwrap();
        assert_eq!(mount.mount_path, "/etc/agentry/secrets");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn fixed_replicas_set_the_shards() {
        let mut t = full_tenant();
        if let Some(r) = t.spec.runtime.as_mut() {
            r.autoscaling = None;
        }
        assert_eq!(replicas(&t), Some(3));
        assert_eq!(rate_limit_shards(&t), 3);
    }

    #[test]
    fn suspended_tenant_scales_to_zero_without_an_autoscaler() {
        let mut t = full_tenant();
        t.spec.suspended = true;
        let owner = Owner::of(&t);
        assert_eq!(
            deployment(&owner, &t, &settings(), &bundle(&t))
                .spec
                .unwrap()
                .replicas,
            Some(0)
        );
        assert!(autoscaler(&owner, &t).is_none());
        assert_eq!(rate_limit_shards(&t), 1);
    }

    #[test]
    fn service_and_pdb_select_the_runtime_pods() {
        let owner = Owner::of(&tenant());
        let svc = service(&owner).spec.unwrap();
        assert_eq!(svc.selector.unwrap(), owner.selector());
        let port = &svc.ports.unwrap()[0];
        assert_eq!(port.port, SERVICE_PORT);
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("http".to_owned()))
        );
        let pdb = pod_disruption_budget(&owner).spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert!(pdb.min_available.is_none());
        assert_eq!(
            pdb.selector.unwrap().match_labels.unwrap(),
            owner.selector()
        );
    }
}
