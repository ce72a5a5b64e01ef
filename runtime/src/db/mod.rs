//! PostgreSQL access with tenant isolation enforced by the database.
//!
//! The runtime connects with an application role (never a superuser, a table owner or a
//! BYPASSRLS role; [`Db::connect`] refuses them). A tenant role is mapped to its tenant by
//! `agentry.tenant_roles`; a shared role (dev mode) names the tenant per transaction with
//! `set_config('agentry.tenant_id', ..., true)`. See docs/data.md.

mod migrate;

pub use migrate::{MIGRATOR, migrate};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
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
        reason: String,
    },
    /// The `agentry` schema does not exist in the database.
    #[error("the database has no agentry schema: run `agentry-runtime migrate` first")]
    NotMigrated,
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

/// How the runtime's pools are sized and how long a request waits for a connection.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
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
        let pool = pool_options(max_connections).connect_with(options).await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool after the same checks as [`Db::connect`].
    ///
    /// Refuses a role that could escape row-level security: a superuser, a BYPASSRLS role, a
    /// CREATEROLE role (it could grant itself either), a member of such a role (`SET ROLE`
    /// reaches it), and an owner (or member of the owner) of the `agentry` schema or of
    /// anything in it (an owner can disable RLS, drop a policy or replace a function).
    pub async fn from_pool(pool: PgPool) -> Result<Self, DbError> {
        let check: RoleCheck = sqlx::query_as(ROLE_CHECK).fetch_one(&pool).await?;
        let unsafe_role = |reason: String| DbError::UnsafeRole {
            role: check.role.clone(),
            reason,
        };
        if check.superuser {
            return Err(unsafe_role("it is a superuser".into()));
        }
        if check.bypass_rls {
            return Err(unsafe_role("it has BYPASSRLS".into()));
        }
        if check.create_role {
            return Err(unsafe_role(
                "it has CREATEROLE (it could grant itself a role that bypasses RLS)".into(),
            ));
        }
        if let Some(powerful) = &check.member_of_powerful {
            return Err(unsafe_role(format!(
                "it is a member of {powerful}, which is a superuser or has BYPASSRLS"
            )));
        }
        if let Some(object) = &check.owns {
            return Err(unsafe_role(format!(
                "it owns {object} (directly or through role membership)"
            )));
        }
        if !check.migrated {
            return Err(DbError::NotMigrated);
        }
        let (shared, tenant): (bool, Option<Uuid>) =
            sqlx::query_as("select agentry.session_is_shared(), agentry.current_tenant()")
                .fetch_one(&pool)
                .await?;
        let mode = match (shared, tenant) {
            (true, _) => RoleMode::Shared,
            (false, Some(id)) => RoleMode::Tenant(TenantId(id)),
            (false, None) => return Err(DbError::Unmapped(check.role)),
        };
        Ok(Self {
            pool,
            mode,
            role: check.role,
        })
    }

    /// A second pool of at most `max_connections` as the same role, connecting on first use.
    /// A connection's socket is served by the Tokio runtime it was opened on, so work on
    /// another runtime (the background thread) takes its own pool rather than wake that one.
    pub fn sibling(&self, max_connections: u32) -> Self {
        let pool =
            pool_options(max_connections).connect_lazy_with((*self.pool.connect_options()).clone());
        Self {
            pool,
            mode: self.mode,
            role: self.role.clone(),
        }
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

    /// A connection for one statement that sees only `tenant`'s rows: for writes that fit in
    /// one statement, it saves the `begin` and `commit` round trips of [`Db::begin`] where the
    /// role allows it (see [`Statement`]).
    pub async fn statement(&self, tenant: TenantId) -> Result<Statement, DbError> {
        match self.mode {
            RoleMode::Tenant(own) if own != tenant => Err(DbError::WrongTenant {
                serves: own,
                asked: tenant,
            }),
            RoleMode::Tenant(_) => Ok(Statement::Direct(self.pool.acquire().await?)),
            RoleMode::Shared => Ok(Statement::Transaction(self.begin(tenant).await?)),
        }
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

/// A connection scoped to one tenant for a single statement, from [`Db::statement`].
///
/// A tenant role's connection sees only its tenant in every statement, so the statement runs
/// on its own (one round trip, atomic as every PostgreSQL statement is). A shared role needs
/// the tenant named first, which takes a transaction; [`Statement::finish`] commits it.
pub enum Statement {
    /// A tenant role's pooled connection, in autocommit.
    Direct(PoolConnection<Postgres>),
    /// A shared role's transaction naming the tenant.
    Transaction(Transaction<'static, Postgres>),
}

impl Statement {
    /// The connection to run the statement on.
    pub fn conn(&mut self) -> &mut PgConnection {
        match self {
            Statement::Direct(conn) => conn,
            Statement::Transaction(tx) => tx,
        }
    }

    /// Commits the shared role's transaction; nothing to do for a tenant role.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Statement::Direct(_) => Ok(()),
            Statement::Transaction(tx) => tx.commit().await,
        }
    }
}

/// What [`Db::from_pool`] learns about the session role.
#[derive(sqlx::FromRow)]
struct RoleCheck {
    role: String,
    superuser: bool,
    bypass_rls: bool,
    create_role: bool,
    /// Superuser or BYPASSRLS roles the session role is a member of.
    member_of_powerful: Option<String>,
    /// One object of the agentry schema (or the schema itself) the role owns.
    owns: Option<String>,
    migrated: bool,
}

/// The session role's attributes. `session_user`, not `current_user`: it is the role the
/// tenant mapping follows, and every role it can `SET ROLE` to is one it is a member of, so
/// the membership checks cover those. `pg_has_role(.., 'MEMBER')` is true for the role itself.
const ROLE_CHECK: &str = "
select r.rolname::text as role,
       r.rolsuper as superuser,
       r.rolbypassrls as bypass_rls,
       r.rolcreaterole as create_role,
       (select string_agg(quote_ident(p.rolname), ', ' order by p.rolname)
          from pg_roles p
         where p.oid <> r.oid and (p.rolsuper or p.rolbypassrls)
           and pg_has_role(r.oid, p.oid, 'MEMBER')) as member_of_powerful,
       (select min(o.object) from (
          select 'schema agentry' as object
            from pg_namespace n
           where n.nspname = 'agentry' and pg_has_role(r.oid, n.nspowner, 'MEMBER')
          union all
          select 'relation ' || c.oid::regclass::text
            from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = 'agentry' and pg_has_role(r.oid, c.relowner, 'MEMBER')
          union all
          select 'function ' || p.oid::regprocedure::text
            from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = 'agentry' and pg_has_role(r.oid, p.proowner, 'MEMBER')
        ) o) as owns,
       to_regnamespace('agentry') is not null as migrated
  from pg_roles r
 where r.rolname = session_user";

impl From<DbError> for crate::error::ApiError {
    fn from(e: DbError) -> Self {
        Self::internal(e)
    }
}
