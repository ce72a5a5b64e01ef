//! The tenants this process serves and their bundles, hot-reloaded.
//!
//! Cluster mode reads one tenant's compiled bundle from a file (a mounted ConfigMap); dev mode
//! compiles a folder of YAML with the same compiler the operator uses. Both swap bundles
//! atomically when the source changes; an invalid change is reported (log, metric,
//! `GET /api/v1/admin/bundle`) and the last good bundle keeps serving.

mod file;
mod folder;

pub use file::{FileSource, load_bundle_file};
pub use folder::{FolderSource, TenantProvisioner, compile_folder};

use std::collections::BTreeMap;
use std::sync::Arc;

use agentry_crds::{Diagnostic, RuntimeBundle};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::Serialize;

use crate::tenancy::{TenantHandle, TenantId};

/// What the last load of the bundle source produced.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    /// Where bundles come from (a file path or a folder).
    pub source: String,
    /// When the bundles in force were loaded.
    pub loaded_at: Option<DateTime<Utc>>,
    /// The last rejected change, if the newest source content could not be used.
    pub last_error: Option<String>,
    /// When that change was rejected.
    pub rejected_at: Option<DateTime<Utc>>,
    /// Compiler diagnostics of the bundles in force, by tenant name.
    pub diagnostics: BTreeMap<String, Vec<Diagnostic>>,
}

/// The tenants served, by name and by id.
#[derive(Debug, Default)]
pub struct TenantRegistry {
    by_name: RwLock<BTreeMap<String, Arc<TenantHandle>>>,
    report: RwLock<LoadReport>,
}

impl TenantRegistry {
    /// An empty registry for bundles from `source`.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            by_name: RwLock::default(),
            report: RwLock::new(LoadReport {
                source: source.into(),
                ..LoadReport::default()
            }),
        }
    }

    /// The tenant named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<TenantHandle>> {
        self.by_name.read().get(name).cloned()
    }

    /// The tenant with id `id`.
    pub fn by_id(&self, id: TenantId) -> Option<Arc<TenantHandle>> {
        self.by_name.read().values().find(|t| t.id == id).cloned()
    }

    /// Every tenant, by name.
    pub fn all(&self) -> Vec<Arc<TenantHandle>> {
        self.by_name.read().values().cloned().collect()
    }

    /// The only tenant, when exactly one is served (cluster mode).
    pub fn single(&self) -> Option<Arc<TenantHandle>> {
        let map = self.by_name.read();
        if map.len() == 1 {
            map.values().next().cloned()
        } else {
            None
        }
    }

    /// True once at least one bundle is in force.
    pub fn is_loaded(&self) -> bool {
        !self.by_name.read().is_empty()
    }

    /// Installs `bundle` for tenant `id`: swaps the bundle of a served tenant, or adds it.
    /// Returns whether anything changed.
    pub fn install(&self, id: TenantId, bundle: RuntimeBundle) -> bool {
        let name = bundle.tenant.name.clone();
        if let Some(existing) = self.by_name(&name) {
            if existing.bundle().hash == bundle.hash {
                return false;
            }
            existing.swap_bundle(bundle);
            return true;
        }
        self.by_name
            .write()
            .insert(name, Arc::new(TenantHandle::new(id, bundle)));
        true
    }

    /// Stops serving tenants not named in `keep`.
    pub fn retain(&self, keep: &[String]) {
        self.by_name.write().retain(|name, _| keep.contains(name));
    }

    /// Records a successful load.
    pub fn loaded(&self, diagnostics: BTreeMap<String, Vec<Diagnostic>>) {
        let mut report = self.report.write();
        report.loaded_at = Some(Utc::now());
        report.diagnostics = diagnostics;
        report.last_error = None;
        report.rejected_at = None;
    }

    /// Records a rejected change; the bundles in force stay.
    pub fn rejected(&self, error: String) {
        let mut report = self.report.write();
        report.last_error = Some(error);
        report.rejected_at = Some(Utc::now());
    }

    /// The last load report.
    pub fn report(&self) -> LoadReport {
        self.report.read().clone()
    }
}
