//! Schema migrations (`agentry-runtime migrate`, a Helm hook Job in the cluster).

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The runtime's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies pending migrations. Run as the schema owner (superuser or a role with BYPASSRLS).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
