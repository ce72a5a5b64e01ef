//! Compiling a tenant's bundle only when what it is compiled from changed.
//!
//! Compiling is most of a reconcile's CPU time (CEL, templates and JSON Schemas checked, the
//! canonical JSON written and hashed: 1.3-2.4 ms for 5 agents, 5 tools and 3 workflows on the
//! benchmark machines, see docs/benchmarks.md), and
//! a converged tenant's inputs are the same every time. The compiler reads only the names and
//! specs of the Tenant and of the Agents, Tools, Workflows and FeatureFlags in its namespace,
//! and a spec changes only with its object's `generation`. So the controller remembers, per
//! tenant, a fingerprint of those inputs (names, uids, generations), a digest of the bundle it
//! published and the compiler's diagnostics. When the fingerprint is unchanged it reads the
//! bundle back from the ConfigMap (one GET) and uses it if the digest matches, which also
//! catches a ConfigMap edited or replaced by hand: then it compiles and the apply puts the
//! bundle back. Anything unexpected (no ConfigMap, a failed read, a bundle that does not parse)
//! falls back to compiling.
//!
//! What is kept is under 200 bytes per tenant (plus diagnostics, usually none), not the
//! bundle itself (tens of KiB): with 10,000 tenants, memory matters as much as CPU time.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::{Mutex, PoisonError};

use agentry_crds::bundle::{Compilation, Diagnostic, compile, sha256};
use agentry_crds::{RuntimeBundle, Tenant};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, ResourceExt as _};

use super::fetch::Fetched;
use crate::builders::{BUNDLE_CONFIGMAP, BUNDLE_KEY};
use crate::metrics::Metrics;

/// A compiled bundle with the canonical JSON the ConfigMap holds.
#[derive(Debug)]
pub struct Published {
    /// The bundle and the compiler's diagnostics.
    pub compilation: Compilation,
    /// `compilation.bundle` as canonical JSON.
    pub json: String,
}

/// What the last compile of each tenant produced, by tenant name.
#[derive(Debug, Default)]
pub struct Memo {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    inputs: u64,
    /// SHA-256 of the published JSON, as bytes (a hex string would be one more allocation).
    digest: [u8; 32],
    diagnostics: Vec<Diagnostic>,
}

impl Memo {
    fn get(&self, tenant: &str) -> Option<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    fn remember(&self, tenant: &str, entry: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_owned(), entry);
    }

    /// Forgets a tenant (it is being deleted).
    pub fn forget(&self, tenant: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
    }
}

/// A fingerprint of everything the compiler reads, or `None` when an object lacks the uid or
/// generation that would tell a change (such a tenant is compiled every time).
pub fn fingerprint(tenant: &Tenant, fetched: &Fetched) -> Option<u64> {
    fn object(hasher: &mut DefaultHasher, meta: &ObjectMeta) -> Option<()> {
        meta.name.hash(hasher);
        meta.uid.as_ref()?.hash(hasher);
        meta.generation?.hash(hasher);
        Some(())
    }
    // Each kind's count first, so that an object moving from one kind to another changes it.
    fn kind<'a>(
        hasher: &mut DefaultHasher,
        metas: impl ExactSizeIterator<Item = &'a ObjectMeta>,
    ) -> Option<()> {
        metas.len().hash(hasher);
        metas.map(|meta| object(hasher, meta)).collect()
    }
    let mut hasher = DefaultHasher::new();
    object(&mut hasher, &tenant.metadata)?;
    kind(&mut hasher, fetched.agents.iter().map(|a| &a.metadata))?;
    kind(&mut hasher, fetched.tools.iter().map(|t| &t.metadata))?;
    kind(&mut hasher, fetched.workflows.iter().map(|w| &w.metadata))?;
    kind(&mut hasher, fetched.flags.iter().map(|f| &f.metadata))?;
    Some(hasher.finish())
}

/// The tenant's bundle: the one it published last when its inputs are unchanged and the
/// ConfigMap still holds it, else freshly compiled.
pub async fn bundle(
    client: &Client,
    memo: &Memo,
    metrics: &Metrics,
    tenant: &Tenant,
    fetched: &Fetched,
) -> Published {
    let name = tenant.name_any();
    let inputs = fingerprint(tenant, fetched);
    if let Some(inputs) = inputs
        && let Some(entry) = memo.get(&name).filter(|e| e.inputs == inputs)
        && let Some(published) = read_back(client, &tenant.namespace_name(), entry).await
    {
        metrics.bundle(true);
        return published;
    }
    metrics.bundle(false);
    let compilation = compile(&fetched.sources(tenant));
    let json = compilation.bundle.to_canonical_json();
    if let Some(inputs) = inputs {
        memo.remember(
            &name,
            Entry {
                inputs,
                digest: sha256(json.as_bytes()),
                diagnostics: compilation.diagnostics.clone(),
            },
        );
    }
    Published { compilation, json }
}

/// The published bundle, if the ConfigMap holds exactly what was published.
async fn read_back(client: &Client, namespace: &str, entry: Entry) -> Option<Published> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_map = match config_maps.get_opt(BUNDLE_CONFIGMAP).await {
        Ok(found) => found?,
        Err(e) => {
            tracing::debug!(%namespace, error = %e, "reading the bundle back failed; compiling");
            return None;
        }
    };
    let json = config_map.data?.remove(BUNDLE_KEY)?;
    if sha256(json.as_bytes()) != entry.digest {
        return None;
    }
    let bundle: RuntimeBundle = serde_json::from_str(&json).ok()?;
    Some(Published {
        compilation: Compilation {
            bundle,
            diagnostics: entry.diagnostics,
        },
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tenant;

    fn stamped() -> (Tenant, Fetched) {
        let mut t = tenant();
        t.metadata.uid = Some("u-1".to_owned());
        t.metadata.generation = Some(1);
        let mut agent = agentry_crds::Agent::new("general", Default::default());
        agent.metadata.uid = Some("a-1".to_owned());
        agent.metadata.generation = Some(3);
        let fetched = Fetched {
            agents: vec![agent],
            ..Fetched::default()
        };
        (t, fetched)
    }

    #[test]
    fn the_fingerprint_follows_names_uids_and_generations_only() {
        let (t, fetched) = stamped();
        let base = fingerprint(&t, &fetched).unwrap();

        let mut status_only = fetched.clone();
        status_only.agents[0].metadata.resource_version = Some("99".to_owned());
        status_only.agents[0].status = Some(Default::default());
        assert_eq!(fingerprint(&t, &status_only), Some(base));

        let mut edited = fetched.clone();
        edited.agents[0].metadata.generation = Some(4);
        assert_ne!(fingerprint(&t, &edited), Some(base));

        let mut recreated = fetched.clone();
        recreated.agents[0].metadata.uid = Some("a-2".to_owned());
        assert_ne!(fingerprint(&t, &recreated), Some(base));

        let mut moved = fetched.clone();
        let mut tool = crate::fixtures::objects(false).tools.remove(0);
        tool.metadata = moved.agents.remove(0).metadata;
        moved.tools = vec![tool.clone()];
        assert_ne!(
            fingerprint(&t, &moved),
            Some(base),
            "an Agent became a Tool"
        );

        tool.metadata.uid = None;
        moved.tools = vec![tool];
        assert_eq!(fingerprint(&t, &moved), None, "the Tool has no uid");

        let mut t2 = t.clone();
        t2.metadata.generation = Some(2);
        assert_ne!(fingerprint(&t2, &fetched), Some(base));

        let mut unstamped = t.clone();
        unstamped.metadata.generation = None;
        assert_eq!(fingerprint(&unstamped, &fetched), None);
    }
}
