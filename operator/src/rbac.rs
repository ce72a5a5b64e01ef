//! Every Kubernetes permission the operator uses, as `(apiGroup, resource, verbs)`.
//!
//! The Helm chart's ClusterRole must grant exactly this table (its tests compare them), and
//! the controller tests check every API call the controller makes against it, so the table
//! stays accurate. Server-side apply creates objects that do not exist, so every applied
//! resource needs `create` as well as `patch`.

/// `(apiGroup, resource, verbs)`; the core group is `""`.
pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
    // Tenants: watched (metadata only), read at the start of each reconcile, finalizer added
    // and removed (patch), status applied.
    ("agentry.dev", "tenants", &["get", "list", "watch", "patch"]),
    ("agentry.dev", "tenants/status", &["patch"]),
    // Owner references with blockOwnerDeletion need this on the owner.
    ("agentry.dev", "tenants/finalizers", &["update"]),
    // Tenant objects: read to compile the bundle, status written by the Tenant controller.
    ("agentry.dev", "agents", &["list", "watch"]),
    ("agentry.dev", "agents/status", &["patch"]),
    ("agentry.dev", "tools", &["list", "watch"]),
    ("agentry.dev", "tools/status", &["patch"]),
    ("agentry.dev", "workflows", &["list", "watch"]),
    ("agentry.dev", "workflows/status", &["patch"]),
    ("agentry.dev", "featureflags", &["list", "watch"]),
    ("agentry.dev", "featureflags/status", &["patch"]),
    // What a Tenant becomes.
    (
        "",
        "namespaces",
        &["get", "list", "watch", "create", "patch"],
    ),
    ("", "resourcequotas", &["list", "watch", "create", "patch"]),
    ("", "limitranges", &["list", "watch", "create", "patch"]),
    ("", "serviceaccounts", &["list", "watch", "create", "patch"]),
    // Secrets: the tenant's credentials (read to keep them), provider keys (read in the
    // operator's namespace, copied into the tenant's).
    ("", "secrets", &["get", "list", "watch", "create", "patch"]),
    // ConfigMaps: the bundle (read back instead of compiling it again when its inputs are
    // unchanged).
    (
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch"],
    ),
    ("", "services", &["list", "watch", "create", "patch"]),
    (
        "apps",
        "deployments",
        &["list", "watch", "create", "patch", "delete"],
    ),
    (
        "policy",
        "poddisruptionbudgets",
        &["list", "watch", "create", "patch"],
    ),
    (
        "autoscaling",
        "horizontalpodautoscalers",
        &["list", "watch", "create", "patch", "delete"],
    ),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["list", "watch", "create", "patch"],
    ),
    (
        "networking.k8s.io",
        "ingresses",
        &["list", "watch", "create", "patch"],
    ),
    // Events on Tenants (kube-runtime's recorder creates, then patches a series).
    ("events.k8s.io", "events", &["create", "patch"]),
    // Leader election.
    ("coordination.k8s.io", "leases", &["get", "create", "patch"]),
];

/// Whether the table grants `verb` on `resource` of `group`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS
        .iter()
        .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_no_duplicate_rows_or_verbs() {
        let mut seen = std::collections::BTreeSet::new();
        for (group, resource, verbs) in PERMISSIONS {
            assert!(seen.insert((group, resource)), "{group}/{resource} twice");
            let unique: std::collections::BTreeSet<_> = verbs.iter().collect();
            assert_eq!(unique.len(), verbs.len(), "{group}/{resource}");
        }
        assert!(allows("apps", "deployments", "delete"));
        assert!(!allows("", "namespaces", "delete"));
    }
}
