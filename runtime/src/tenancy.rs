//! Tenants as the runtime sees them: an id, a name and the bundle currently served.

use std::sync::Arc;

use agentry_crds::RuntimeBundle;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tenant's id (the primary key of `agentry.tenants`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One tenant served by this process. The bundle is swapped atomically on reload; a request
/// takes a snapshot ([`TenantHandle::bundle`]) and finishes on it.
#[derive(Debug)]
pub struct TenantHandle {
    /// Tenant id.
    pub id: TenantId,
    /// Tenant name (also the NATS subject token).
    pub name: String,
    bundle: RwLock<Arc<RuntimeBundle>>,
}

impl TenantHandle {
    /// A handle serving `bundle`.
    pub fn new(id: TenantId, bundle: RuntimeBundle) -> Self {
        Self {
            id,
            name: bundle.tenant.name.clone(),
            bundle: RwLock::new(Arc::new(bundle)),
        }
    }

    /// The bundle in force now.
    pub fn bundle(&self) -> Arc<RuntimeBundle> {
        self.bundle.read().clone()
    }

    /// Replaces the bundle; requests that already took a snapshot keep theirs.
    pub fn swap_bundle(&self, bundle: RuntimeBundle) {
        *self.bundle.write() = Arc::new(bundle);
    }
}
