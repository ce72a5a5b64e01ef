//! Which Tenants a namespace and a provider key Secret belong to.
//!
//! The watches of Agents, Tools, Workflows, FeatureFlags and Secrets map each change back to
//! Tenants by the Tenant's `spec.namespace` and `spec.providers[].apiKeySecretRef`. The
//! controller caches Tenants as metadata only (a few hundred bytes each instead of ~6 KiB
//! with spec and status), so those two spec fields are recorded here instead, from the Tenant
//! each reconcile reads, and forgotten when its cleanup is done.
//!
//! A Tenant is recorded before its reconcile reads anything, so a change that the index
//! misses (it came before the Tenant's first reconcile) is one that reconcile still sees.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use agentry_crds::Tenant;
use kube::ResourceExt as _;

use super::fetch::provider_secret_names;

/// Namespace and provider key Secrets of every Tenant reconciled since the operator started.
#[derive(Debug, Default)]
pub struct TenantIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What each Tenant was recorded with, so that a change replaces the old entries.
    by_tenant: HashMap<String, Recorded>,
    /// Namespace → Tenants naming it, sorted (one, unless a second Tenant claims a taken
    /// namespace and is reported invalid for it). Sorted vectors rather than sets: with
    /// 10,000 Tenants a set's node per namespace is most of the index.
    namespaces: HashMap<String, Vec<String>>,
    /// Provider key Secret in the operator's namespace → Tenants naming it, sorted.
    secrets: HashMap<String, Vec<String>>,
}

#[derive(Debug, PartialEq)]
struct Recorded {
    namespace: String,
    /// Sorted, without duplicates; a vector because a one-element set still allocates a
    /// whole B-tree node (about 270 bytes).
    secrets: Vec<String>,
}

fn insert(map: &mut HashMap<String, Vec<String>>, key: &str, tenant: &str) {
    let tenants = map.entry(key.to_owned()).or_default();
    if let Err(at) = tenants.binary_search_by(|t| t.as_str().cmp(tenant)) {
        tenants.insert(at, tenant.to_owned());
    }
}

fn remove(map: &mut HashMap<String, Vec<String>>, key: &str, tenant: &str) {
    if let Some(tenants) = map.get_mut(key) {
        tenants.retain(|t| t != tenant);
        if tenants.is_empty() {
            map.remove(key);
        }
    }
}

impl Inner {
    fn forget(&mut self, tenant: &str) {
        if let Some(old) = self.by_tenant.remove(tenant) {
            remove(&mut self.namespaces, &old.namespace, tenant);
            for secret in &old.secrets {
                remove(&mut self.secrets, secret, tenant);
            }
        }
    }
}

impl TenantIndex {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the Tenant's namespace and provider key Secrets, replacing what it had.
    pub fn record(&self, tenant: &Tenant) {
        let name = tenant.name_any();
        let now = Recorded {
            namespace: tenant.namespace_name(),
            secrets: provider_secret_names(tenant).into_iter().collect(),
        };
        // The usual case, a Tenant that has not changed, takes only the read lock.
        if self.read().by_tenant.get(&name) == Some(&now) {
            return;
        }
        let mut inner = self.write();
        inner.forget(&name);
        insert(&mut inner.namespaces, &now.namespace, &name);
        for secret in &now.secrets {
            insert(&mut inner.secrets, secret, &name);
        }
        inner.by_tenant.insert(name, now);
    }

    /// Drops everything recorded for the Tenant `name`.
    pub fn forget(&self, name: &str) {
        self.write().forget(name);
    }

    /// Tenants whose namespace is `namespace` (none, or one).
    pub fn tenants_in_namespace(&self, namespace: &str) -> Vec<String> {
        self.read()
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    /// Tenants with a provider whose API key is in the Secret `name`.
    pub fn tenants_using_secret(&self, name: &str) -> Vec<String> {
        self.read().secrets.get(name).cloned().unwrap_or_default()
    }

    /// Number of Tenants recorded.
    pub fn len(&self) -> usize {
        self.read().by_tenant.len()
    }

    /// Whether no Tenant is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentry_crds::common::SecretKeyRef;
    use agentry_crds::tenant::{ProviderSpec, ProviderType, TenantSpec};

    fn tenant(name: &str, namespace: Option<&str>, secrets: &[&str]) -> Tenant {
        let providers = secrets
            .iter()
            .map(|secret| ProviderSpec {
                name: format!("p-{secret}"),
                type_: ProviderType::Openai,
                base_url: Some("https://api.openai.com/v1".to_owned()),
                api_key_secret_ref: Some(SecretKeyRef {
                    name: (*secret).to_owned(),
                    key: "api-key".to_owned(),
                }),
                timeout_ms: None,
            })
            .collect();
        Tenant::new(
            name,
            TenantSpec {
                namespace: namespace.map(str::to_owned),
                providers,
                ..TenantSpec::default()
            },
        )
    }

    #[test]
    fn namespaces_map_to_the_tenant_that_names_them_by_default_or_by_spec() {
        let index = TenantIndex::default();
        index.record(&tenant("acme", None, &[]));
        index.record(&tenant("globex", Some("globex-prod"), &[]));
        index.record(&tenant("initech", Some("tenant-umbrella"), &[]));
        assert_eq!(index.tenants_in_namespace("tenant-acme"), ["acme"]);
        assert_eq!(index.tenants_in_namespace("globex-prod"), ["globex"]);
        assert!(index.tenants_in_namespace("tenant-globex").is_empty());
        assert_eq!(index.tenants_in_namespace("tenant-umbrella"), ["initech"]);
        assert!(index.tenants_in_namespace("kube-system").is_empty());
    }

    #[test]
    fn provider_secrets_map_to_every_tenant_naming_them() {
        let index = TenantIndex::default();
        index.record(&tenant("acme", None, &["openai-key"]));
        index.record(&tenant("globex", None, &["openai-key", "other-key"]));
        index.record(&tenant("umbrella", None, &[]));
        assert_eq!(index.tenants_using_secret("openai-key"), ["acme", "globex"]);
        assert_eq!(index.tenants_using_secret("other-key"), ["globex"]);
        assert!(index.tenants_using_secret("unrelated").is_empty());
    }

    #[test]
    fn a_changed_tenant_replaces_its_entries_and_a_forgotten_one_leaves_none() {
        let index = TenantIndex::default();
        index.record(&tenant("acme", None, &["old-key"]));
        index.record(&tenant("acme", Some("acme-prod"), &["new-key"]));
        assert!(index.tenants_in_namespace("tenant-acme").is_empty());
        assert_eq!(index.tenants_in_namespace("acme-prod"), ["acme"]);
        assert!(index.tenants_using_secret("old-key").is_empty());
        assert_eq!(index.tenants_using_secret("new-key"), ["acme"]);

        // A second Tenant claiming the namespace maps there too (it is reported invalid).
        index.record(&tenant("rival", Some("acme-prod"), &[]));
        assert_eq!(index.tenants_in_namespace("acme-prod"), ["acme", "rival"]);
        index.forget("acme");
        assert_eq!(index.tenants_in_namespace("acme-prod"), ["rival"]);
        assert!(index.tenants_using_secret("new-key").is_empty());
        index.forget("rival");
        index.forget("never-recorded");
        assert!(index.is_empty());
        let inner = index.read();
        assert!(inner.namespaces.is_empty() && inner.secrets.is_empty());
    }
}
