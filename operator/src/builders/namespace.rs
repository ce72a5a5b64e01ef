//! The tenant namespace and its guard rails: Pod Security, ResourceQuota, LimitRange and the
//! runtime's ServiceAccount.

use std::collections::BTreeMap;

use agentry_crds::Tenant;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Owner, RUNTIME};

/// Quota of a tenant whose spec sets none: room for a few runtime replicas.
pub const DEFAULT_QUOTA_CPU: &str = "4";
/// Default memory quota (requests).
pub const DEFAULT_QUOTA_MEMORY: &str = "8Gi";
/// Default pod count quota.
pub const DEFAULT_QUOTA_PODS: &str = "20";
/// Requests a container gets when it states none.
pub const DEFAULT_REQUEST_CPU: &str = "100m";
/// Default memory request.
pub const DEFAULT_REQUEST_MEMORY: &str = "128Mi";
/// Memory limit a container gets when it states none.
pub const DEFAULT_LIMIT_MEMORY: &str = "512Mi";

/// The namespace: tenant label and Pod Security `restricted`, enforced, warned and audited.
pub fn namespace(owner: &Owner) -> Namespace {
    let mut meta = owner.meta(&owner.namespace);
    meta.namespace = None;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for mode in ["enforce", "warn", "audit"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".to_owned(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".to_owned(),
        );
    }
    Namespace {
        metadata: meta,
        ..Namespace::default()
    }
}

fn quantity(value: &str) -> Quantity {
    Quantity(value.to_owned())
}

/// ResourceQuota from `spec.quota` (requests of CPU and memory, pod count); each figure the
/// spec leaves out takes its default.
pub fn resource_quota(owner: &Owner, tenant: &Tenant) -> ResourceQuota {
    let quota = tenant.spec.quota.clone().unwrap_or_default();
    let hard = BTreeMap::from([
        (
            "requests.cpu".to_owned(),
            quota.cpu.unwrap_or_else(|| quantity(DEFAULT_QUOTA_CPU)),
        ),
        (
            "requests.memory".to_owned(),
            quota
                .memory
                .unwrap_or_else(|| quantity(DEFAULT_QUOTA_MEMORY)),
        ),
        (
            "pods".to_owned(),
            quota.pods.unwrap_or_else(|| quantity(DEFAULT_QUOTA_PODS)),
        ),
    ]);
    ResourceQuota {
        metadata: owner.meta("agentry-quota"),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

/// LimitRange: default requests and memory limit for containers that state none, so that
/// the quota (which counts requests) admits them. No `max`: the LimitRanger refuses a
/// container without a limit for a resource that has a max, and the quota caps the total
/// anyway.
pub fn limit_range(owner: &Owner) -> LimitRange {
    LimitRange {
        metadata: owner.meta("agentry-limits"),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_owned(),
                default_request: Some(BTreeMap::from([
                    ("cpu".to_owned(), quantity(DEFAULT_REQUEST_CPU)),
                    ("memory".to_owned(), quantity(DEFAULT_REQUEST_MEMORY)),
                ])),
                default: Some(BTreeMap::from([(
                    "memory".to_owned(),
                    quantity(DEFAULT_LIMIT_MEMORY),
                )])),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

/// The runtime's ServiceAccount: it never talks to the Kubernetes API, so no token.
pub fn service_account(owner: &Owner) -> ServiceAccount {
    ServiceAccount {
        metadata: owner.meta(RUNTIME),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{full_tenant, tenant};

    #[test]
    fn namespace_is_labelled_and_restricted() {
        let ns = namespace(&Owner::of(&tenant()));
        assert_eq!(ns.metadata.name.as_deref(), Some("tenant-acme"));
        assert_eq!(ns.metadata.namespace, None);
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["agentry.dev/tenant"], "acme");
        for mode in ["enforce", "warn", "audit"] {
            assert_eq!(
                labels[&format!("pod-security.kubernetes.io/{mode}")],
                "restricted"
            );
        }
        let full = namespace(&Owner::of(&full_tenant()));
        assert_eq!(full.metadata.name.as_deref(), Some("acme-prod"));
    }

    #[test]
    fn quota_defaults_and_spec_figures() {
        let default = resource_quota(&Owner::of(&tenant()), &tenant());
        let hard = default.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.cpu"], quantity(DEFAULT_QUOTA_CPU));
        assert_eq!(hard["requests.memory"], quantity(DEFAULT_QUOTA_MEMORY));
        assert_eq!(hard["pods"], quantity(DEFAULT_QUOTA_PODS));

        let t = full_tenant();
        let full = resource_quota(&Owner::of(&t), &t);
        let hard = full.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.cpu"], quantity("8"));
        assert_eq!(hard["requests.memory"], quantity("16Gi"));
        assert_eq!(hard["pods"], quantity("30"));
        assert_eq!(full.metadata.namespace.as_deref(), Some("acme-prod"));
    }

    #[test]
    fn limit_range_gives_defaults_and_no_max() {
        let default = limit_range(&Owner::of(&tenant()));
        let item = &default.spec.unwrap().limits[0];
        assert_eq!(item.type_, "Container");
        assert_eq!(
            item.default_request.as_ref().unwrap()["memory"],
            quantity(DEFAULT_REQUEST_MEMORY)
        );
        assert_eq!(
            item.default.as_ref().unwrap()["memory"],
            quantity(DEFAULT_LIMIT_MEMORY)
        );
        assert!(item.max.is_none());
        assert!(item.default.as_ref().unwrap().get("cpu").is_none());
    }

    #[test]
    fn service_account_mounts_no_token() {
        let sa = service_account(&Owner::of(&tenant()));
        assert_eq!(sa.metadata.name.as_deref(), Some(RUNTIME));
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}
