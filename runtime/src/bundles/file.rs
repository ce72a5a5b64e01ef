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
        let bundle = load_bundle_file(&path)?;
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
        })
    }

    /// Polls the file until `shutdown`, installing each valid change.
    pub async fn watch(
        self,
        registry: Arc<TenantRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut last = std::fs::read(&self.path).ok();
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
