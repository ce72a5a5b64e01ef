//! The Tenant pipeline: fetch → validate → compile → apply guard rails → provision the
//! database → build and apply the workload → object statuses → Tenant status. Every step is
//! idempotent; a converged tenant re-applies identical objects and writes no status.

use agentry_crds::Tenant;
use agentry_crds::bundle::{Compilation, ObjectKind};
use agentry_crds::conditions::{find, reasons, types};
use agentry_crds::tenant::OnDelete;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt as _};
use serde::Deserialize;

use super::error::Error;
use super::fetch;
use super::{Context, api, children, compiled};
use crate::builders::bundle::MAX_BUNDLE_BYTES;
use crate::builders::{self, BUNDLE_KEY, CREDENTIALS_SECRET, Inputs, RUNTIME, tool_secrets};
use crate::database::{Provisioned, RoleName, TenantRecord, is_tenant_name};
use crate::settings::Settings;
use crate::status::{self, Check, Observation};

/// Namespaces a Tenant may never take, whatever their labels say.
const RESERVED_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Whether the Tenant can be reconciled as written: a valid name, and a namespace that is
/// free or already this tenant's.
pub fn validate(
    tenant: &Tenant,
    namespace: Option<&Namespace>,
    settings: &Settings,
) -> Result<(), String> {
    let name = tenant.name_any();
    if !is_tenant_name(&name) {
        return Err(format!(
            "metadata.name {name:?} must be a DNS label of at most 40 characters that starts with a letter"
        ));
    }
    let ns = tenant.namespace_name();
    if RESERVED_NAMESPACES.contains(&ns.as_str()) || ns == settings.operator_namespace {
        return Err(format!(
            "spec.namespace {ns} is reserved for the cluster or the platform; choose another"
        ));
    }
    let Some(existing) = namespace else {
        return Ok(());
    };
    // Ours even if someone removed the label: the next apply puts it back.
    let owned = tenant.uid().is_some_and(|uid| {
        existing
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.kind == "Tenant")
    });
    if owned {
        return Ok(());
    }
    match existing.labels().get(agentry_crds::common::TENANT_LABEL) {
        Some(owner) if *owner == name => Ok(()),
        Some(owner) => Err(format!(
            "namespace {ns} belongs to Tenant {owner}; choose another spec.namespace"
        )),
        None => Err(format!(
            "namespace {ns} exists and is not a tenant namespace; label it {}={name} to adopt it (it is then deleted with the Tenant), or choose another spec.namespace",
            agentry_crds::common::TENANT_LABEL
        )),
    }
}

/// Where a reconcile starts: what the status said last time, so that a step that fails
/// changes its own condition and the steps it never reached keep theirs.
fn initial_observation(tenant: &Tenant) -> Observation {
    let current = tenant.status.clone().unwrap_or_default();
    let part = |type_: &str, waiting: &str, default_message: &str| {
        find(&current.conditions, type_).map_or_else(
            || Check::fail(waiting, default_message),
            |c| Check {
                ok: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
            },
        )
    };
    Observation {
        generation: tenant.metadata.generation,
        suspended: tenant.spec.suspended,
        namespace: tenant.namespace_name(),
        endpoint: current.endpoint.clone(),
        namespace_ready: part(
            types::NAMESPACE_READY,
            reasons::PROGRESSING,
            "the namespace is not provisioned yet",
        ),
        database_ready: part(
            types::DATABASE_READY,
            reasons::WAITING,
            "waiting for the namespace",
        ),
        bundle_ready: part(
            types::BUNDLE_READY,
            reasons::WAITING,
            "waiting for the database role",
        ),
        runtime_ready: part(
            types::RUNTIME_READY,
            reasons::WAITING,
            "waiting for the bundle",
        ),
        bundle_hash: current.bundle_hash.clone(),
        counts: current.counts.clone(),
    }
}

/// Records `error` on `check` and hands it back.
fn failed(check: &mut Check, error: Error) -> Error {
    *check = Check::fail(
        if error.is_invalid() {
            reasons::INVALID
        } else {
            reasons::ERROR
        },
        error.to_string(),
    );
    error
}

/// Apply: runs the pipeline, then writes the Tenant status whatever happened.
pub(super) async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let now = ctx.now();
    let mut obs = initial_observation(tenant);
    let outcome = pipeline(tenant, ctx, &mut obs, &now).await;
    let written = write_status(tenant, ctx, &obs, now).await;
    let action = outcome?;
    written?;
    Ok(action)
}

async fn pipeline(
    tenant: &Tenant,
    ctx: &Context,
    obs: &mut Observation,
    now: &Time,
) -> Result<Action, Error> {
    let client = &ctx.client;
    let settings = &ctx.settings;
    let fetched = fetch::fetch(client, tenant, &settings.operator_namespace)
        .await
        .map_err(|e| failed(&mut obs.namespace_ready, e))?;
    validate(tenant, fetched.namespace.as_ref(), settings)
        .map_err(|problem| failed(&mut obs.namespace_ready, Error::Invalid(problem)))?;
    let published = compiled::bundle(client, &ctx.compiled, &ctx.metrics, tenant, &fetched).await;
    let compilation = &published.compilation;
    obs.counts = Some(status::counts(compilation));
    let referenced = tool_secrets::references(&compilation.bundle);
    let secret_keys = fetch::secret_keys(client, &obs.namespace, referenced.keys())
        .await
        .map_err(|e| failed(&mut obs.namespace_ready, e))?;
    let tool_problems = tool_secrets::missing(&compilation.bundle, &obs.namespace, &secret_keys);

    let rails = builders::guard_rails(tenant, settings, &compilation.bundle);
    apply_guard_rails(ctx, &rails)
        .await
        .map_err(|e| failed(&mut obs.namespace_ready, e))?;
    obs.namespace_ready = Check::ok(
        reasons::RECONCILED,
        format!(
            "namespace {} with quota, limits, network policies and service account",
            obs.namespace
        ),
    );

    let database = ctx
        .provisioner
        .ensure(&TenantRecord::of(tenant), &fetched.existing_credentials())
        .await
        .map_err(|e| failed(&mut obs.database_ready, e.into()))?;
    let (provider_keys, missing_keys) = fetched.provider_keys(tenant, &settings.operator_namespace);
    let workload = builders::workload(&Inputs {
        tenant,
        settings,
        bundle: &compilation.bundle,
        bundle_json: &published.json,
        database: &database,
        provider_keys: &provider_keys,
    });
    api::apply(client, &workload.credentials)
        .await
        .map_err(|e| failed(&mut obs.database_ready, e))?;
    obs.database_ready = Check::ok(
        reasons::RECONCILED,
        format!(
            "role {} serves tenant {}; credentials in Secret {CREDENTIALS_SECRET}",
            database.role, database.tenant_id
        ),
    );
    if database.password_rotated || database.admin_key_created {
        ctx.publish(
            tenant,
            EventType::Normal,
            "Provisioned",
            provisioned_note(&database, &obs.namespace),
        )
        .await;
    }

    api::apply(client, &workload.provider_keys)
        .await
        .map_err(|e| failed(&mut obs.bundle_ready, e))?;
    let size = workload
        .bundle
        .data
        .as_ref()
        .and_then(|d| d.get(BUNDLE_KEY))
        .map_or(0, String::len);
    if size <= MAX_BUNDLE_BYTES {
        api::apply(client, &workload.bundle)
            .await
            .map_err(|e| failed(&mut obs.bundle_ready, e))?;
        obs.bundle_hash = Some(compilation.bundle.hash.clone());
    }
    obs.bundle_ready = bundle_check(compilation, size, &missing_keys, tool_problems.len());

    let rollout: Rollout = api::apply_and_read(client, &workload.deployment)
        .await
        .map_err(|e| failed(&mut obs.runtime_ready, e))?;
    apply_runtime_extras(ctx, &workload, &obs.namespace)
        .await
        .map_err(|e| failed(&mut obs.runtime_ready, e))?;
    obs.endpoint = Some(builders::endpoint(tenant, settings));
    obs.runtime_ready = runtime_check(tenant, &rollout);

    children::write_statuses(ctx, &fetched, compilation, &tool_problems, now).await?;
    Ok(Action::requeue(ctx.resync))
}

async fn apply_guard_rails(ctx: &Context, rails: &builders::GuardRails) -> Result<(), Error> {
    let client = &ctx.client;
    api::apply_cluster(client, &rails.namespace).await?;
    api::apply(client, &rails.quota).await?;
    api::apply(client, &rails.limits).await?;
    for policy in &rails.network_policies {
        api::apply(client, policy).await?;
    }
    api::apply(client, &rails.service_account).await?;
    Ok(())
}

/// Service, PDB, and the autoscaler and Ingress, each deleted when it is not wanted.
async fn apply_runtime_extras(
    ctx: &Context,
    workload: &builders::Workload,
    namespace: &str,
) -> Result<(), Error> {
    let client = &ctx.client;
    api::apply(client, &workload.service).await?;
    api::apply(client, &workload.pdb).await?;
    match &workload.hpa {
        Some(hpa) => api::apply(client, hpa).await?,
        None => api::delete::<HorizontalPodAutoscaler>(client, namespace, RUNTIME).await?,
    }
    // Without Ingress settings the operator leaves Ingresses alone: it never made any.
    if let Some(ingress) = &workload.ingress {
        api::apply::<Ingress>(client, ingress).await?;
    }
    Ok(())
}

fn provisioned_note(database: &Provisioned, namespace: &str) -> String {
    let mut made = Vec::new();
    if database.password_rotated {
        made.push(format!(
            "a new password for database role {}",
            database.role
        ));
    }
    if database.admin_key_created {
        made.push("a bootstrap admin API key (key admin-api-key)".to_owned());
    }
    format!(
        "generated {} in Secret {namespace}/{CREDENTIALS_SECRET}",
        made.join(" and ")
    )
}

/// BundleReady: published, with what the tenant's own spec got wrong or what is missing.
/// Tools waiting for a Secret are counted like invalid objects: they say why themselves and
/// the rest of the tenant serves.
fn bundle_check(
    compilation: &Compilation,
    size: usize,
    missing_keys: &[String],
    tools_waiting: usize,
) -> Check {
    if size > MAX_BUNDLE_BYTES {
        return Check::fail(
            reasons::INVALID,
            format!(
                "the bundle is {size} bytes, more than a ConfigMap holds ({MAX_BUNDLE_BYTES}); the previous bundle stays in place"
            ),
        );
    }
    let tenant_problems: Vec<String> = compilation
        .diagnostics
        .iter()
        .filter(|d| d.kind == ObjectKind::Tenant)
        .map(ToString::to_string)
        .collect();
    if !tenant_problems.is_empty() {
        return Check::fail(reasons::INVALID, tenant_problems.join("; "));
    }
    if !missing_keys.is_empty() {
        return Check::fail(reasons::WAITING, missing_keys.join("; "));
    }
    let c = status::counts(compilation);
    let mut message = format!(
        "bundle published: {} agents, {} tools, {} workflows, {} flags",
        c.agents, c.tools, c.workflows, c.flags
    );
    if c.invalid > 0 {
        message.push_str(&format!(
            "; {} invalid objects left out (see their Ready condition)",
            c.invalid
        ));
    }
    if tools_waiting > 0 {
        message.push_str(&format!(
            "; {tools_waiting} tools wait for a Secret (see their Ready condition)"
        ));
    }
    Check::ok(reasons::COMPILED, message)
}

/// What RuntimeReady needs of the Deployment the API server returns after the apply.
#[derive(Debug, Default, Deserialize)]
struct Rollout {
    spec: Option<RolloutSpec>,
    status: Option<RolloutStatus>,
}

#[derive(Debug, Default, Deserialize)]
struct RolloutSpec {
    replicas: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RolloutStatus {
    available_replicas: Option<i32>,
}

/// RuntimeReady from the Deployment the API server returned.
fn runtime_check(tenant: &Tenant, deployment: &Rollout) -> Check {
    if tenant.spec.suspended {
        return Check::ok(
            reasons::SUSPENDED,
            "suspended: the runtime is scaled to zero",
        );
    }
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let message = format!("{available} of {desired} replicas available");
    if available > 0 {
        Check::ok(reasons::RECONCILED, message)
    } else {
        Check::fail(
            reasons::PROGRESSING,
            format!("{message}; waiting for the runtime to become ready"),
        )
    }
}

/// Writes the Tenant status when it changed and publishes an Event when `Ready` moved.
async fn write_status(
    tenant: &Tenant,
    ctx: &Context,
    obs: &Observation,
    now: Time,
) -> Result<(), Error> {
    let next = status::tenant_status(tenant.status.as_ref(), obs, now);
    if tenant.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    api::apply_status(&api, tenant, &next).await?;
    ctx.metrics.status_written("Tenant");
    let before = tenant
        .status
        .as_ref()
        .and_then(|s| find(&s.conditions, types::READY))
        .map(|c| (c.status.clone(), c.reason.clone()));
    // Transient errors are reported by `reconcile` itself, every time they happen.
    if let Some(ready) = find(&next.conditions, types::READY)
        && ready.reason != reasons::ERROR
        && before != Some((ready.status.clone(), ready.reason.clone()))
    {
        let type_ = if ready.status == "True" || ready.reason == reasons::SUSPENDED {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reason = if ready.status == "True" {
            "Ready"
        } else {
            &ready.reason
        };
        ctx.publish(tenant, type_, reason, ready.message.clone())
            .await;
    }
    Ok(())
}

/// Cleanup: marks the Tenant Terminating, stops its runtime, then removes its database role
/// (and rows, with `onDelete: Delete`). Kubernetes collects the namespace and everything
/// else through owner references once the finalizer is gone.
pub(super) async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    let namespace = tenant.namespace_name();
    let next = status::terminating(tenant.status.as_ref());
    if tenant.status.as_ref() != Some(&next) {
        let api: Api<Tenant> = Api::all(ctx.client.clone());
        api::apply_status(&api, tenant, &next).await?;
        ctx.metrics.status_written("Tenant");
    }
    ctx.compiled.forget(&name);
    ctx.index.forget(&name);
    // Stop the runtime first so that no pod reconnects while its role is dropped.
    api::delete::<Deployment>(&ctx.client, &namespace, RUNTIME).await?;
    ctx.provisioner.remove(&name, tenant.spec.on_delete).await?;
    let role = RoleName::for_tenant(&name)
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    let rows = match tenant.spec.on_delete {
        OnDelete::Retain => "kept (onDelete: Retain)",
        OnDelete::Delete => "deleted (onDelete: Delete)",
    };
    ctx.publish(
        tenant,
        EventType::Normal,
        "Deprovisioned",
        format!("dropped database role {role}; the tenant's rows were {rows}; namespace {namespace} goes with the Tenant"),
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tenant;
    use crate::settings::tests::settings;
    use std::collections::BTreeMap;

    fn namespace(labels: &[(&str, &str)]) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("tenant-acme".to_owned());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
        ns
    }

    #[test]
    fn a_free_or_own_namespace_is_valid() {
        let t = tenant();
        assert_eq!(validate(&t, None, &settings()), Ok(()));
        let own = namespace(&[("agentry.dev/tenant", "acme")]);
        assert_eq!(validate(&t, Some(&own), &settings()), Ok(()));
    }

    #[test]
    fn a_namespace_of_another_tenant_or_nobody_is_refused_with_a_way_out() {
        let t = tenant();
        let other = namespace(&[("agentry.dev/tenant", "globex")]);
        let e = validate(&t, Some(&other), &settings()).unwrap_err();
        assert!(e.contains("belongs to Tenant globex"), "{e}");
        let foreign = namespace(&[]);
        let e = validate(&t, Some(&foreign), &settings()).unwrap_err();
        assert!(e.contains("label it agentry.dev/tenant=acme"), "{e}");
    }

    #[test]
    fn a_namespace_the_tenant_owns_is_its_own_even_without_the_label() {
        let t = tenant();
        let mut ns = namespace(&[]);
        ns.metadata.owner_references = Some(vec![crate::builders::Owner::of(&t).reference]);
        assert_eq!(validate(&t, Some(&ns), &settings()), Ok(()));
    }

    #[test]
    fn runtime_is_ready_once_a_replica_is_available() {
        let t = tenant();
        // What the API server answers an apply with; only spec.replicas and the status count.
        let mut answer = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "agentry-runtime", "managedFields": [{"manager": "x"}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "runtime"}]}}},
        });
        let waiting = runtime_check(&t, &serde_json::from_value(answer.clone()).unwrap());
        assert!(!waiting.ok);
        assert_eq!(waiting.reason, reasons::PROGRESSING);
        assert!(waiting.message.starts_with("0 of 2 replicas available"));
        answer["status"] = serde_json::json!({"replicas": 2, "availableReplicas": 1});
        let serving = runtime_check(&t, &serde_json::from_value(answer).unwrap());
        assert!(serving.ok);
        assert_eq!(serving.message, "1 of 2 replicas available");
    }

    #[test]
    fn bundle_check_names_missing_keys_and_oversized_bundles() {
        let t = tenant();
        let c = agentry_crds::bundle::compile(&agentry_crds::bundle::BundleSources::new(t));
        assert!(bundle_check(&c, 10, &[], 0).ok);
        let waiting = bundle_check(&c, 10, &[], 2);
        assert!(waiting.ok);
        assert!(
            waiting
                .message
                .ends_with("; 2 tools wait for a Secret (see their Ready condition)"),
            "{}",
            waiting.message
        );
        let missing = bundle_check(
            &c,
            10,
            &["provider openai: Secret agentry-system/k not found".to_owned()],
            0,
        );
        assert!(!missing.ok);
        assert_eq!(missing.reason, reasons::WAITING);
        assert!(missing.message.contains("openai"));
        let big = bundle_check(&c, MAX_BUNDLE_BYTES + 1, &[], 0);
        assert!(!big.ok && big.message.contains("more than a ConfigMap holds"));
    }

    #[test]
    fn reserved_namespaces_are_refused() {
        for ns in ["kube-system", "default", "agentry-system"] {
            let mut t = tenant();
            t.spec.namespace = Some(ns.to_owned());
            let e = validate(&t, None, &settings()).unwrap_err();
            assert!(e.contains("reserved"), "{e}");
        }
    }
}
