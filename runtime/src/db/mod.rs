//! PostgreSQL access with tenant isolation enforced by the database.
//!
//! The runtime connects with an application role (never a superuser, a table owner or a
//! BYPASSRLS role; [`Db::connect`] refuses them). A tenant role is mapped to its tenant by
//! `agentry.tenant_roles`; a shared role (dev mode) names the tenant per transaction with
//! `set_config('agentry.tenant_id', ..., true)`. See docs/data.md.

mod migrate;

pub use migrate::{MIGRATOR, migrate};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

use crate::tenancy::TenantId;

/// How the connected role is tied to tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleMode {
    /// A tenant's login role: every statement sees only this tenant.
    Tenant(TenantId),
    /// A shared role (dev mode): each transaction names its tenant.
    Shared,
}

/// Why the runtime cannot use a database connection.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached or answered an error.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The role would bypass row-level security.
    #[error(
        "refusing to run as database role {role:?}: {reason}; connect with a tenant role (see docs/data.md)"
    )]
    UnsafeRole {
        /// The session role.
        role: String,
        /// What makes it unsafe.
        reason: &'static str,
    },
    /// The role is neither a tenant role nor a shared role.
    #[error(
        "database role {0:?} is not mapped to a tenant in agentry.tenant_roles (did the operator provision it, and did `agentry-runtime migrate` run?)"
    )]
    Unmapped(String),
    /// A transaction was asked for a tenant this role cannot serve.
    #[error("database role serves tenant {serves}, not {asked}")]
    WrongTenant {
        /// The tenant of the role.
        serves: TenantId,
        /// The tenant asked for.
        asked: TenantId,
    },
}

/// A pool of connections as one application role.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    mode: RoleMode,
    role: String,
}

impl Db {
    /// Connects, refuses unsafe roles, and finds out how the role maps to tenants.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(PgConnectOptions::from_str(url)?, max_connections).await
    }

    /// Like [`Db::connect`], with parsed options.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, DbError> {
        let options = options.application_name("agentry-runtime");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool after the same checks as [`Db::connect`].
    pub async fn from_pool(pool: PgPool) -> Result<Self, DbError> {
        let (role, superuser, bypass, owns): (String, bool, bool, bool) = sqlx::query_as(
            "select r.rolname::text, r.rolsuper, r.rolbypassrls,
                    exists (select 1 from pg_tables t
                            where t.schemaname = 'agentry'
                              and pg_has_role(session_user, t.tableowner, 'MEMBER'))
             from pg_roles r where r.rolname = session_user",
        )
        .fetch_one(&pool)
        .await?;
        let unsafe_role = |reason| DbError::UnsafeRole {
            role: role.clone(),
            reason,
        };
        if superuser {
            return Err(unsafe_role("it is a superuser"));
        }
        if bypass {
            return Err(unsafe_role("it has BYPASSRLS"));
        }
        if owns {
            return Err(unsafe_role(
                "it owns (or is a member of the owner of) the agentry tables",
            ));
        }
        let (shared, tenant): (bool, Option<Uuid>) =
            sqlx::query_as("select agentry.session_is_shared(), agentry.current_tenant()")
                .fetch_one(&pool)
                .await?;
        let mode = match (shared, tenant) {
            (true, _) => RoleMode::Shared,
            (false, Some(id)) => RoleMode::Tenant(TenantId(id)),
            (false, None) => return Err(DbError::Unmapped(role)),
        };
        Ok(Self { pool, mode, role })
    }

    /// How the role maps to tenants.
    pub fn mode(&self) -> RoleMode {
        self.mode
    }

    /// The session role's name.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The underlying pool, for statements that are not tenant-scoped (health checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction that sees only `tenant`'s rows.
    pub async fn begin(&self, tenant: TenantId) -> Result<Transaction<'static, Postgres>, DbError> {
        match self.mode {
            RoleMode::Tenant(own) if own != tenant => Err(DbError::WrongTenant {
                serves: own,
                asked: tenant,
            }),
            RoleMode::Tenant(_) => Ok(self.pool.begin().await?),
            RoleMode::Shared => {
                let mut tx = self.pool.begin().await?;
                // `true`: the setting ends with the transaction, so a pooled connection never
                // carries one tenant into another's transaction.
                sqlx::query("select set_config('agentry.tenant_id', $1, true)")
                    .bind(tenant.0.to_string())
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }
}

impl From<DbError> for crate::error::ApiError {
    fn from(e: DbError) -> Self {
        Self::internal(e)
    }
}
