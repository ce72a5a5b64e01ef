//! Cluster mode: one tenant's bundle from a JSON file, polled for changes.
//!
//! Polling (not inotify) because a ConfigMap volume updates by swapping a symlink, which file
//! watches miss; reading a small file twice a second costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::BUNDLE_SCHEMA_VERSION;
use tokio_util::sync::CancellationToken;

use super::TenantRegistry;
use crate::metrics::{Metrics, ReloadLabels};
use crate::tenancy::TenantId;

/// Reads and checks a bundle file: JSON, the supported schema version, an intact hash.
pub fn load_bundle_file(path: &Path) -> Result<RuntimeBundle, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("reading bundle {}: {e}", path.display()))?;
    parse_bundle(&bytes).map_err(|e| format!("bundle {}: {e}", path.display()))
}

fn parse_bundle(bytes: &[u8]) -> Result<RuntimeBundle, String> {
    let bundle: RuntimeBundle =
        serde_json::from_slice(bytes).map_err(|e| format!("not a runtime bundle: {e}"))?;
    if bundle.schema_version != BUNDLE_SCHEMA_VERSION {
        return Err(format!(
            "schema version {} is not supported (this runtime reads version {BUNDLE_SCHEMA_VERSION})",
            bundle.schema_version
        ));
    }
    if !bundle.verify_hash() {
        return Err("content does not match its hash (edited after compilation?)".to_owned());
    }
    Ok(bundle)
}

/// Watches one tenant's bundle file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    tenant: TenantId,
    tenant_name: String,
    /// The bytes installed by `open`, so a change between `open` and `watch` is not missed.
    loaded: Vec<u8>,
}

impl FileSource {
    /// Loads the bundle at `path` for `tenant` into `registry`; fails when it is unusable or
    /// belongs to another tenant.
    pub fn open(
        path: PathBuf,
        tenant: TenantId,
        tenant_name: &str,
        registry: &TenantRegistry,
    ) -> Result<Self, String> {
        let loaded =
            std::fs::read(&path).map_err(|e| format!("reading bundle {}: {e}", path.display()))?;
        let bundle =
            parse_bundle(&loaded).map_err(|e| format!("bundle {}: {e}", path.display()))?;
        if bundle.tenant.name != tenant_name {
            return Err(format!(
                "bundle {} is for tenant {:?} but the database role serves {tenant_name:?}",
                path.display(),
                bundle.tenant.name
            ));
        }
        registry.install(tenant, bundle);
        registry.loaded(Default::default());
        Ok(Self {
            path,
            tenant,
            tenant_name: tenant_name.to_owned(),
            loaded,
        })
    }

    /// Polls the file until `shutdown`, installing each valid change.
    pub async fn watch(
        mut self,
        registry: Arc<TenantRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut last = Some(std::mem::take(&mut self.loaded));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(bytes) = std::fs::read(&self.path) else {
                continue;
            };
            if last.as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            last = Some(bytes.clone());
            let result = parse_bundle(&bytes).and_then(|b| {
                if b.tenant.name == self.tenant_name {
                    Ok(b)
                } else {
                    Err(format!(
                        "bundle is for tenant {:?}, not {:?}",
                        b.tenant.name, self.tenant_name
                    ))
                }
            });
            let outcome = match result {
                Ok(bundle) => {
                    let hash = bundle.hash.clone();
                    let changed = registry.install(self.tenant, bundle);
                    registry.loaded(Default::default());
                    tracing::info!(path = %self.path.display(), %hash, changed, "bundle reloaded");
                    if changed { "applied" } else { "unchanged" }
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "bundle change rejected; the last good bundle keeps serving");
                    registry.rejected(e);
                    "rejected"
                }
            };
            metrics
                .bundle_reloads
                .get_or_create(&ReloadLabels {
                    tenant: self.tenant_name.clone(),
                    result: outcome.to_owned(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use agentry_crds::bundle::{compile, group_by_tenant, parse_documents};
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn example_bundle(tenant: &str) -> RuntimeBundle {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let text = std::fs::read_to_string(dir.join(format!("{tenant}.yaml"))).unwrap();
        let (resources, errors) = parse_documents(&text);
        assert!(errors.is_empty(), "{errors:?}");
        let (sources, _) = group_by_tenant(resources);
        compile(&sources[0]).bundle
    }

    #[tokio::test]
    async fn a_changed_file_is_swapped_in_and_a_bad_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        let original = example_bundle("acme");
        std::fs::write(&path, original.to_canonical_json()).unwrap();
        let registry = Arc::new(TenantRegistry::new(path.display().to_string()));
        let tenant = TenantId(uuid::Uuid::new_v4());
        let source = FileSource::open(path.clone(), tenant, "acme", &registry).unwrap();
        let in_flight = registry.by_name("acme").unwrap().bundle();
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(source.watch(
            registry.clone(),
            Arc::new(Metrics::new()),
            shutdown.clone(),
        ));

        // A new bundle for the same tenant replaces the old one; a request that took a
        // snapshot before keeps the bundle it started with.
        let mut changed = original.clone();
        changed.tenant.display_name = Some("Acme Renamed".to_owned());
        changed.hash = changed.content_hash();
        std::fs::write(&path, changed.to_canonical_json()).unwrap();
        let mut swapped = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if registry.by_name("acme").unwrap().bundle().hash == changed.hash {
                swapped = true;
                break;
            }
        }
        assert!(
            swapped,
            "the new bundle was not installed within 4 s: {:?}",
            registry.report()
        );
        assert_eq!(in_flight.hash, original.hash);

        // A tampered file (hash mismatch) and another tenant's bundle are rejected.
        let mut tampered = changed.clone();
        tampered.tenant.display_name = Some("edited by hand".to_owned());
        std::fs::write(&path, tampered.to_canonical_json()).unwrap();
        let mut rejected = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(e) = registry.report().last_error {
                rejected = Some(e);
                break;
            }
        }
        assert!(
            rejected.is_some_and(|e| e.contains("hash")),
            "tampered bundle not rejected"
        );
        assert_eq!(
            registry.by_name("acme").unwrap().bundle().hash,
            changed.hash
        );
        std::fs::write(&path, example_bundle("globex").to_canonical_json()).unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            registry
                .report()
                .last_error
                .is_some_and(|e| e.contains("globex"))
        );
        assert_eq!(
            registry.by_name("acme").unwrap().bundle().hash,
            changed.hash
        );
        shutdown.cancel();
        watcher.await.unwrap();
    }

    #[test]
    fn opening_another_tenants_bundle_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        std::fs::write(&path, example_bundle("globex").to_canonical_json()).unwrap();
        let registry = TenantRegistry::new("test");
        let err =
            FileSource::open(path, TenantId(uuid::Uuid::new_v4()), "acme", &registry).unwrap_err();
        assert!(err.contains("globex") && err.contains("acme"), "{err}");
    }
}
