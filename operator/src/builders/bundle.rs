//! The bundle ConfigMap: the tenant's compiled `RuntimeBundle` as canonical JSON.

use std::collections::BTreeMap;

use agentry_crds::RuntimeBundle;
use k8s_openapi::api::core::v1::ConfigMap;

use super::{BUNDLE_CONFIGMAP, BUNDLE_KEY, Owner};

/// Annotation with the bundle's content hash, for people and tools reading the ConfigMap.
pub const BUNDLE_HASH_ANNOTATION: &str = "agentry.dev/bundle-hash";
/// Largest bundle a ConfigMap can hold (the API server refuses objects over 1 MiB; this
/// leaves room for metadata).
pub const MAX_BUNDLE_BYTES: usize = 1_000_000;

/// The ConfigMap the runtime mounts: `json` is `bundle`'s canonical JSON
/// ([`RuntimeBundle::to_canonical_json`]), made once by whoever compiled or read the bundle.
/// The runtime polls the file and hot-reloads it, so the pod template carries no hash of it:
/// a new bundle must not restart pods.
pub fn config_map(owner: &Owner, bundle: &RuntimeBundle, json: &str) -> ConfigMap {
    let mut meta = owner.meta(BUNDLE_CONFIGMAP);
    meta.annotations = Some(BTreeMap::from([(
        BUNDLE_HASH_ANNOTATION.to_owned(),
        bundle.hash.clone(),
    )]));
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(BUNDLE_KEY.to_owned(), json.to_owned())])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{bundle, full_tenant, tenant};

    #[test]
    fn the_config_map_holds_the_canonical_bundle_and_its_hash() {
        for t in [tenant(), full_tenant()] {
            let b = bundle(&t);
            let cm = config_map(&Owner::of(&t), &b, &b.to_canonical_json());
            let json = &cm.data.as_ref().unwrap()[BUNDLE_KEY];
            assert_eq!(json, &b.to_canonical_json());
            let parsed: RuntimeBundle = serde_json::from_str(json).unwrap();
            assert!(parsed.verify_hash());
            assert_eq!(parsed.tenant.name, "acme");
            assert_eq!(
                cm.metadata.annotations.unwrap()[BUNDLE_HASH_ANNOTATION],
                b.hash
            );
            assert_eq!(cm.metadata.namespace, Some(t.namespace_name()));
        }
    }
}
