//! Dev mode: every tenant in a folder of YAML, compiled with the operator's compiler and
//! recompiled when a file changes.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentry_crds::bundle::{compile, group_by_tenant, parse_documents};
use agentry_crds::{Diagnostic, RuntimeBundle};
use tokio_util::sync::CancellationToken;

use super::TenantRegistry;
use crate::metrics::{Metrics, ReloadLabels};
use crate::tenancy::TenantId;

/// Makes sure a tenant of the folder exists in the database; returns its id.
pub trait TenantProvisioner: Send + Sync {
    /// Creates or updates the tenant's row (and whatever dev mode gives a new tenant).
    fn ensure(
        &self,
        bundle: &RuntimeBundle,
    ) -> impl Future<Output = Result<TenantId, String>> + Send;
}

/// The compiled tenants of a folder.
#[derive(Debug, Clone)]
pub struct FolderBundles {
    /// Each tenant's bundle and its diagnostics.
    pub tenants: Vec<(RuntimeBundle, Vec<Diagnostic>)>,
    /// Objects that belong to no tenant.
    pub orphans: Vec<Diagnostic>,
}

/// Compiles every `.yaml`/`.yml` file in `dir` (not recursive). Documents that are not valid
/// resources fail the whole folder, naming file and document, so that a half-edited file never
/// replaces a working configuration.
pub fn compile_folder(dir: &Path) -> Result<FolderBundles, String> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for path in yaml_files(dir)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let (parsed, parse_errors) = parse_documents(&text);
        errors.extend(
            parse_errors
                .into_iter()
                .map(|e| format!("{}: {e}", path.display())),
        );
        resources.extend(parsed);
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let (sources, orphans) = group_by_tenant(resources);
    if sources.is_empty() {
        return Err(format!("no Tenant found in {}", dir.display()));
    }
    let tenants = sources
        .iter()
        .map(|s| {
            let c = compile(s);
            (c.bundle, c.diagnostics)
        })
        .collect();
    Ok(FolderBundles { tenants, orphans })
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("reading folder {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// A fingerprint of the folder's YAML files: names, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Serves the tenants of a folder.
#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    /// Fingerprint taken before the first compile, so a change made meanwhile is not missed.
    opened: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

impl FolderSource {
    /// Compiles the folder and installs every tenant; fails when nothing can be served.
    pub async fn open<P: TenantProvisioner>(
        dir: PathBuf,
        provisioner: &P,
        registry: &TenantRegistry,
    ) -> Result<Self, String> {
        let opened = fingerprint(&dir);
        let source = Self { dir, opened };
        source.apply(provisioner, registry).await?;
        Ok(source)
    }

    async fn apply<P: TenantProvisioner>(
        &self,
        provisioner: &P,
        registry: &TenantRegistry,
    ) -> Result<Vec<(String, bool)>, String> {
        let compiled = compile_folder(&self.dir)?;
        for d in &compiled.orphans {
            tracing::warn!(diagnostic = %d, "object ignored");
        }
        let mut ids = Vec::new();
        for (bundle, _) in &compiled.tenants {
            ids.push(provisioner.ensure(bundle).await?);
        }
        let mut diagnostics = BTreeMap::new();
        let mut outcome = Vec::new();
        let mut names = Vec::new();
        for ((bundle, diags), id) in compiled.tenants.into_iter().zip(ids) {
            for d in &diags {
                tracing::warn!(tenant = %bundle.tenant.name, diagnostic = %d, "object left out of the bundle");
            }
            let name = bundle.tenant.name.clone();
            let changed = registry.install(id, bundle);
            diagnostics.insert(name.clone(), diags);
            names.push(name.clone());
            outcome.push((name, changed));
        }
        registry.retain(&names);
        registry.loaded(diagnostics);
        Ok(outcome)
    }

    /// Polls the folder until `shutdown` and recompiles on change.
    pub async fn watch<P: TenantProvisioner>(
        self,
        provisioner: Arc<P>,
        registry: Arc<TenantRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut last = self.opened.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = fingerprint(&self.dir);
            if now == last {
                continue;
            }
            last = now;
            match self.apply(provisioner.as_ref(), &registry).await {
                Ok(outcome) => {
                    for (tenant, changed) in outcome {
                        let result = if changed { "applied" } else { "unchanged" };
                        if changed {
                            tracing::info!(%tenant, "bundle recompiled and applied");
                        }
                        metrics
                            .bundle_reloads
                            .get_or_create(&ReloadLabels {
                                tenant,
                                result: result.to_owned(),
                            })
                            .inc();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change rejected; the last good bundles keep serving");
                    registry.rejected(e);
                    metrics
                        .bundle_reloads
                        .get_or_create(&ReloadLabels {
                            tenant: "-".to_owned(),
                            result: "rejected".to_owned(),
                        })
                        .inc();
                }
            }
        }
    }
}
