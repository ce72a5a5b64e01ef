//! Status that tells the truth, computed without I/O: the Tenant's phase and conditions from
//! what reconcile observed, and each Agent/Tool/Workflow/FeatureFlag's `Ready` condition from
//! the bundle compiler. Conditions keep their `lastTransitionTime` while their status holds,
//! so a converged object computes a status equal to the one it has and nothing is written.

use agentry_crds::bundle::{Compilation, ObjectKind, canonical_json, sha256_hex};
use agentry_crds::conditions::{condition, reasons, set_condition, types};
use agentry_crds::tenant::{BundleCounts, TenantPhase};
use agentry_crds::{
    Agent, AgentStatus, FeatureFlag, FeatureFlagStatus, TenantStatus, Tool, ToolStatus, Workflow,
    WorkflowStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;

/// The outcome of one part of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whether the part is ready.
    pub ok: bool,
    /// Condition reason (from [`reasons`]).
    pub reason: String,
    /// What a person should know; names the problem when not ok.
    pub message: String,
}

impl Check {
    /// A ready part.
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// A part that is not ready.
    pub fn fail(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// What one reconcile of a Tenant found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// `metadata.generation` of the Tenant.
    pub generation: Option<i64>,
    /// `spec.suspended`.
    pub suspended: bool,
    /// The tenant namespace.
    pub namespace: String,
    /// The runtime URL, once the runtime objects exist.
    pub endpoint: Option<String>,
    /// Namespace and guard rails.
    pub namespace_ready: Check,
    /// Database role and mapping.
    pub database_ready: Check,
    /// Bundle compiled and published.
    pub bundle_ready: Check,
    /// Runtime replicas available.
    pub runtime_ready: Check,
    /// Published bundle hash.
    pub bundle_hash: Option<String>,
    /// Objects in the bundle.
    pub counts: Option<BundleCounts>,
}

/// Counts of a compilation: compiled objects by kind, and objects left out.
pub fn counts(compilation: &Compilation) -> BundleCounts {
    let b = &compilation.bundle;
    let mut invalid: Vec<(ObjectKind, &str)> = compilation
        .diagnostics
        .iter()
        .filter(|d| d.kind != ObjectKind::Tenant)
        .map(|d| (d.kind, d.name.as_str()))
        .collect();
    invalid.dedup();
    let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
    BundleCounts {
        agents: n(b.agents.len()),
        tools: n(b.tools.len()),
        workflows: n(b.workflows.len()),
        flags: n(b.flags.len()),
        invalid: n(invalid.len()),
    }
}

/// The Tenant's status after `observation`, starting from its current status.
pub fn tenant_status(current: Option<&TenantStatus>, obs: &Observation, now: Time) -> TenantStatus {
    let mut conditions: Vec<Condition> = current.map(|s| s.conditions.clone()).unwrap_or_default();
    let parts = [
        (types::NAMESPACE_READY, &obs.namespace_ready),
        (types::DATABASE_READY, &obs.database_ready),
        (types::BUNDLE_READY, &obs.bundle_ready),
        (types::RUNTIME_READY, &obs.runtime_ready),
    ];
    for (type_, check) in parts {
        set_condition(
            &mut conditions,
            condition(
                type_,
                check.ok,
                &check.reason,
                check.message.clone(),
                obs.generation,
                now.clone(),
            ),
        );
    }
    let failing: Vec<(&str, &Check)> = parts.into_iter().filter(|(_, c)| !c.ok).collect();
    let ready = if obs.suspended {
        Check::fail(
            reasons::SUSPENDED,
            "the tenant is suspended: its runtime is scaled to zero and its requests are refused",
        )
    } else if let Some((_, first)) = failing.first() {
        let message = failing
            .iter()
            .map(|(t, c)| format!("{t}: {}", c.message))
            .collect::<Vec<_>>()
            .join("; ");
        Check::fail(&first.reason, message)
    } else {
        Check::ok(reasons::RECONCILED, "the tenant is serving")
    };
    set_condition(
        &mut conditions,
        condition(
            types::READY,
            ready.ok,
            &ready.reason,
            ready.message,
            obs.generation,
            now,
        ),
    );
    let phase = if obs.suspended {
        TenantPhase::Suspended
    } else if ready.ok {
        TenantPhase::Ready
    } else if obs.namespace_ready.reason == reasons::INVALID {
        TenantPhase::Pending
    } else if obs.runtime_ready.ok
        || matches!(
            current.and_then(|s| s.phase),
            Some(TenantPhase::Ready | TenantPhase::Degraded)
        )
    {
        // Served before: something broke, it is not being set up.
        TenantPhase::Degraded
    } else {
        TenantPhase::Provisioning
    };
    TenantStatus {
        phase: Some(phase),
        namespace: Some(obs.namespace.clone()),
        endpoint: obs.endpoint.clone(),
        bundle_hash: obs.bundle_hash.clone(),
        counts: obs.counts.clone(),
        observed_generation: obs.generation,
        conditions,
    }
}

/// The status of a Tenant being deleted.
pub fn terminating(current: Option<&TenantStatus>) -> TenantStatus {
    TenantStatus {
        phase: Some(TenantPhase::Terminating),
        ..current.cloned().unwrap_or_default()
    }
}

/// The object's `Ready` condition from the compilation and what it waits for (a compiled
/// Tool's missing Secrets).
#[allow(clippy::too_many_arguments)]
fn ready_condition(
    current: &[Condition],
    kind: ObjectKind,
    name: &str,
    compiled: bool,
    compilation: &Compilation,
    waiting_for: &[String],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let diagnostics = compilation.diagnostics_for(kind, name);
    let (ok, reason, message) = if compiled && diagnostics.is_empty() && waiting_for.is_empty() {
        (
            true,
            reasons::COMPILED,
            "compiled into the tenant's bundle".to_owned(),
        )
    } else if compiled && diagnostics.is_empty() {
        (
            false,
            reasons::WAITING,
            format!(
                "compiled, but its calls fail until the Secret exists: {}",
                waiting_for.join("; ")
            ),
        )
    } else if diagnostics.is_empty() {
        (
            false,
            reasons::INVALID,
            "left out of the tenant's bundle".to_owned(),
        )
    } else {
        let message = diagnostics
            .iter()
            .map(|d| match &d.field {
                Some(field) => format!("{field}: {}", d.message),
                None => d.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        (false, reasons::INVALID, message)
    };
    let mut conditions = current.to_vec();
    set_condition(
        &mut conditions,
        condition(types::READY, ok, reason, message, generation, now),
    );
    conditions
}

/// Status of an Agent.
pub fn agent_status(agent: &Agent, compilation: &Compilation, now: Time) -> AgentStatus {
    let name = agent.name_any();
    let compiled = compilation.bundle.agents.get(&name);
    let current = agent.status.clone().unwrap_or_default();
    AgentStatus {
        model: compiled.and_then(|a| {
            a.model
                .clone()
                .or_else(|| a.router.as_ref().map(|r| format!("router:{r}")))
        }),
        revision: compiled.map(|a| a.revision.clone()),
        observed_generation: agent.metadata.generation,
        conditions: ready_condition(
            &current.conditions,
            ObjectKind::Agent,
            &name,
            compiled.is_some(),
            compilation,
            &[],
            agent.metadata.generation,
            now,
        ),
    }
}

/// Status of a Tool; `missing_secrets` names the header Secrets or keys it cannot read (see
/// [`crate::builders::tool_secrets::missing`]).
pub fn tool_status(
    tool: &Tool,
    compilation: &Compilation,
    missing_secrets: &[String],
    now: Time,
) -> ToolStatus {
    let name = tool.name_any();
    let compiled = compilation.bundle.tools.get(&name);
    let current = tool.status.clone().unwrap_or_default();
    ToolStatus {
        revision: compiled.map(|t| t.revision.clone()),
        observed_generation: tool.metadata.generation,
        conditions: ready_condition(
            &current.conditions,
            ObjectKind::Tool,
            &name,
            compiled.is_some(),
            compilation,
            missing_secrets,
            tool.metadata.generation,
            now,
        ),
    }
}

/// Status of a Workflow.
pub fn workflow_status(
    workflow: &Workflow,
    compilation: &Compilation,
    now: Time,
) -> WorkflowStatus {
    let name = workflow.name_any();
    let compiled = compilation.bundle.workflows.get(&name);
    let current = workflow.status.clone().unwrap_or_default();
    WorkflowStatus {
        revision: compiled.map(|w| w.revision.clone()),
        node_count: compiled.map(|w| u32::try_from(w.nodes.len()).unwrap_or(u32::MAX)),
        observed_generation: workflow.metadata.generation,
        conditions: ready_condition(
            &current.conditions,
            ObjectKind::Workflow,
            &name,
            compiled.is_some(),
            compilation,
            &[],
            workflow.metadata.generation,
            now,
        ),
    }
}

/// Status of a FeatureFlag object (its flags are keyed by flag, each naming its source).
pub fn flag_status(
    object: &FeatureFlag,
    compilation: &Compilation,
    now: Time,
) -> FeatureFlagStatus {
    let name = object.name_any();
    let flags: Vec<_> = compilation
        .bundle
        .flags
        .values()
        .filter(|f| f.source == name)
        .collect();
    let compiled = !flags.is_empty();
    let current = object.status.clone().unwrap_or_default();
    FeatureFlagStatus {
        flag_count: compiled.then(|| u32::try_from(flags.len()).unwrap_or(u32::MAX)),
        revision: compiled.then(|| {
            let json = canonical_json(&flags).unwrap_or_default();
            sha256_hex(json.as_bytes())[..16].to_owned()
        }),
        observed_generation: object.metadata.generation,
        conditions: ready_condition(
            &current.conditions,
            ObjectKind::FeatureFlag,
            &name,
            compiled,
            compilation,
            &[],
            object.metadata.generation,
            now,
        ),
    }
}

#[cfg(test)]
mod tests;
