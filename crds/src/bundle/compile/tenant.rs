//! Tenant-wide configuration: providers, models, limits, auth.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::Checked;
use crate::bundle::{
    AuthConfig, CompiledAgent, CompiledWorkflow, Diagnostic, JwtConfig, LimitsConfig, ModelConfig,
    ObjectKind, ProviderConfig, TenantConfig,
};
use crate::common::usd_to_micros;
use crate::tenant::{BudgetAction, JwtAlgorithm, MAX_TENANT_NAME, ProviderType, Tenant};

const DEFAULT_PROVIDER_TIMEOUT_MS: u32 = 60_000;

pub(super) fn compile(tenant: &Tenant, diags: &mut Vec<Diagnostic>) -> TenantConfig {
    let name = tenant.name_any();
    let spec = &tenant.spec;
    let mut diag = |field: &str, message: String| {
        diags.push(Diagnostic::new(
            ObjectKind::Tenant,
            name.clone(),
            field,
            message,
        ));
    };
    if name.len() > MAX_TENANT_NAME
        || !is_dns_label(&name)
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        diag(
            "metadata.name",
            format!(
                "a Tenant name must be a DNS label of at most {MAX_TENANT_NAME} characters starting with a letter"
            ),
        );
    }

    let mut providers = BTreeMap::new();
    for (i, p) in spec.providers.iter().enumerate() {
        let field = format!("spec.providers[{i}]");
        if providers.contains_key(&p.name) {
            diag(&field, format!("provider {:?} is declared twice", p.name));
            continue;
        }
        match p.type_ {
            ProviderType::Openai if p.base_url.is_none() => {
                diag(
                    &format!("{field}.baseUrl"),
                    "a provider of type openai needs baseUrl".into(),
                );
                continue;
            }
            ProviderType::Builtin if p.base_url.is_some() || p.api_key_secret_ref.is_some() => {
                diag(
                    &field,
                    "a builtin provider takes no baseUrl or apiKeySecretRef".into(),
                );
                continue;
            }
            _ => {}
        }
        providers.insert(
            p.name.clone(),
            ProviderConfig {
                type_: p.type_,
                base_url: p
                    .base_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
                api_key_secret_ref: p.api_key_secret_ref.clone(),
                timeout_ms: p.timeout_ms.unwrap_or(DEFAULT_PROVIDER_TIMEOUT_MS),
            },
        );
    }

    let mut models = BTreeMap::new();
    for (i, m) in spec.models.iter().enumerate() {
        let field = format!("spec.models[{i}]");
        if models.contains_key(&m.name) {
            diag(&field, format!("model {:?} is declared twice", m.name));
            continue;
        }
        if !providers.contains_key(&m.provider) {
            diag(
                &format!("{field}.provider"),
                format!(
                    "model {:?} names provider {:?}, which is not declared in spec.providers",
                    m.name, m.provider
                ),
            );
            continue;
        }
        let price = |value: &Option<String>, which: &str| -> Result<i64, String> {
            match value {
                None => Ok(0),
                Some(v) => usd_to_micros(v)
                    .ok_or_else(|| format!("{field}.{which}: {v:?} is not a decimal USD amount")),
            }
        };
        match (
            price(&m.input_price_per_mtok_usd, "inputPricePerMTokUsd"),
            price(&m.output_price_per_mtok_usd, "outputPricePerMTokUsd"),
        ) {
            (Ok(input), Ok(output)) => {
                models.insert(
                    m.name.clone(),
                    ModelConfig {
                        provider: m.provider.clone(),
                        upstream_model: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
                        input_micros_per_mtok: input,
                        output_micros_per_mtok: output,
                        context_window: m.context_window,
                    },
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                let (field, message) = e
                    .split_once(": ")
                    .map_or((field.clone(), e.clone()), |(f, m)| {
                        (f.to_owned(), m.to_owned())
                    });
                diag(&field, message);
            }
        }
    }

    let limits = spec.limits.clone().unwrap_or_default();
    let monthly_budget_micros = match &limits.monthly_budget_usd {
        None => None,
        Some(v) => match usd_to_micros(v) {
            Some(m) => Some(m),
            None => {
                diag(
                    "spec.limits.monthlyBudgetUsd",
                    format!("{v:?} is not a decimal USD amount"),
                );
                None
            }
        },
    };
    if limits.budget_action.is_some() && limits.monthly_budget_usd.is_none() {
        diag(
            "spec.limits.budgetAction",
            "budgetAction needs spec.limits.monthlyBudgetUsd".into(),
        );
    }
    if let Some(a) = spec.runtime.as_ref().and_then(|r| r.autoscaling.as_ref())
        && a.min_replicas.unwrap_or(1) > a.max_replicas
    {
        diag(
            "spec.runtime.autoscaling",
            "minReplicas must not exceed maxReplicas".into(),
        );
    }

    let jwt = spec
        .auth
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .and_then(|j| {
            if j.jwks_url.is_some() == j.jwks.is_some() {
                diag(
                    "spec.auth.jwt",
                    "set exactly one of jwksUrl and jwks".into(),
                );
                return None;
            }
            if let Some(inline) = &j.jwks {
                let keys_ok = serde_json::from_str::<serde_json::Value>(inline)
                    .ok()
                    .is_some_and(|v| v.get("keys").is_some_and(serde_json::Value::is_array));
                if !keys_ok {
                    diag(
                        "spec.auth.jwt.jwks",
                        "must be a JSON Web Key Set: a JSON object with a keys array".into(),
                    );
                    return None;
                }
            }
            let mut algorithms = if j.algorithms.is_empty() {
                vec![JwtAlgorithm::RS256]
            } else {
                j.algorithms.clone()
            };
            algorithms.sort();
            algorithms.dedup();
            Some(JwtConfig {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                jwks_url: j.jwks_url.clone(),
                jwks: j.jwks.clone(),
                algorithms,
                user_claim: j.user_claim.clone().unwrap_or_else(|| "sub".to_owned()),
            })
        });

    let mut egress_allowlist = spec
        .network
        .as_ref()
        .map(|n| n.egress_allowlist.clone())
        .unwrap_or_default();
    egress_allowlist.sort();
    egress_allowlist.dedup();
    let per = |r: &Option<crate::tenant::RateSpec>| r.clone().unwrap_or_default();
    TenantConfig {
        name: name.clone(),
        display_name: spec.display_name.clone(),
        plan: spec.plan.clone(),
        namespace: tenant.namespace_name(),
        suspended: spec.suspended,
        on_delete: spec.on_delete,
        default_agent: spec.chat.as_ref().and_then(|c| c.default_agent.clone()),
        default_workflow: spec.chat.as_ref().and_then(|c| c.default_workflow.clone()),
        limits: LimitsConfig {
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
            concurrent_streams: limits.concurrent_streams,
            per_key_requests_per_minute: per(&limits.per_key).requests_per_minute,
            per_key_tokens_per_minute: per(&limits.per_key).tokens_per_minute,
            per_user_requests_per_minute: per(&limits.per_user).requests_per_minute,
            per_user_tokens_per_minute: per(&limits.per_user).tokens_per_minute,
            monthly_budget_micros,
            budget_action: limits.budget_action.unwrap_or(BudgetAction::Block),
        },
        providers,
        models,
        auth: AuthConfig {
            api_keys: spec.auth.as_ref().and_then(|a| a.api_keys).unwrap_or(true),
            jwt,
        },
        egress_allowlist,
        retention_days: spec.retention_days,
    }
}

/// Drops a default agent or workflow that is not in the bundle, with a diagnostic.
pub(super) fn check_chat_defaults(
    tenant: &Tenant,
    config: &mut TenantConfig,
    agents: &BTreeMap<String, Checked<CompiledAgent>>,
    workflows: &BTreeMap<String, Checked<CompiledWorkflow>>,
    diags: &mut Vec<Diagnostic>,
) {
    let name = tenant.name_any();
    if config.default_agent.is_some() && config.default_workflow.is_some() {
        diags.push(Diagnostic::new(
            ObjectKind::Tenant,
            &name,
            "spec.chat",
            "set defaultAgent or defaultWorkflow, not both",
        ));
        config.default_workflow = None;
    }
    if let Some(agent) = config
        .default_agent
        .clone()
        .filter(|a| !agents.contains_key(a))
    {
        diags.push(Diagnostic::new(
            ObjectKind::Tenant,
            &name,
            "spec.chat.defaultAgent",
            format!("agent {agent:?} does not exist or is invalid"),
        ));
        config.default_agent = None;
    }
    if let Some(workflow) = config
        .default_workflow
        .clone()
        .filter(|w| !workflows.contains_key(w))
    {
        diags.push(Diagnostic::new(
            ObjectKind::Tenant,
            &name,
            "spec.chat.defaultWorkflow",
            format!("workflow {workflow:?} does not exist or is invalid"),
        ));
        config.default_workflow = None;
    }
}

/// A DNS-1123 label: lower-case alphanumerics and '-', alphanumeric at both ends, ≤ 63.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
