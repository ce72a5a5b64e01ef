//! [`Provisioner`] on PostgreSQL, through the operator's administrator connection.
//!
//! The administrator must bypass row-level security (superuser, or BYPASSRLS) and be able to
//! create roles and grant `agentry_app`. Every statement is written so that running it again
//! changes nothing: a converged tenant costs a handful of reads.

use agentry_crds::tenant::OnDelete;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use uuid::Uuid;

use super::credentials::{generate_api_key, generate_password, hash_secret, parse_api_key};
use super::{
    DatabaseError, ExistingCredentials, Provisioned, Provisioner, RoleName, TenantRecord,
    quote_literal,
};

/// Name of the API key row the operator creates for a tenant's first administrator.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap admin (operator)";
/// Scope of the bootstrap key.
const ADMIN_SCOPE: &str = "admin";
/// The group role that carries the table privileges.
const APP_ROLE: &str = "agentry_app";

/// Provisions tenants with an administrator pool.
#[derive(Debug, Clone)]
pub struct PgProvisioner {
    admin: PgPool,
}

impl PgProvisioner {
    /// A provisioner on an administrator pool.
    pub fn new(admin: PgPool) -> Self {
        Self { admin }
    }

    /// The administrator pool (readiness checks).
    pub fn pool(&self) -> &PgPool {
        &self.admin
    }

    async fn ensure_inner(
        &self,
        tenant: &TenantRecord,
        existing: &ExistingCredentials,
    ) -> Result<Provisioned, DatabaseError> {
        let role = RoleName::for_tenant(&tenant.name)?;
        let mut tx = self.admin.begin().await?;
        let tenant_id = upsert_tenant(&mut tx, tenant).await?;
        let (password, password_rotated) = ensure_role(&mut tx, &role, existing).await?;
        ensure_mapping(&mut tx, &role, tenant_id).await?;
        let (admin_api_key, admin_key_created) =
            ensure_admin_key(&mut tx, tenant_id, existing.admin_api_key.as_deref()).await?;
        tx.commit().await?;
        Ok(Provisioned {
            tenant_id,
            role: role.as_str().to_owned(),
            password,
            admin_api_key,
            password_rotated,
            admin_key_created,
        })
    }

    async fn remove_inner(&self, tenant: &str, on_delete: OnDelete) -> Result<(), DatabaseError> {
        let role = RoleName::for_tenant(tenant)?;
        let mut conn = self.admin.acquire().await?;
        let exists = role_exists(&mut conn, &role).await?;
        if exists {
            // No new sessions first, then end the open ones: a runtime pod that is still
            // shutting down cannot reconnect between the two steps.
            execute(&mut conn, format!("alter role {} nologin", role.quoted())).await?;
        }
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where usename = $1 and pid <> pg_backend_pid()",
        )
        .bind(role.as_str())
        .execute(&mut *conn)
        .await?;
        sqlx::query("delete from agentry.tenant_roles where role_name = $1")
            .bind(role.as_str())
            .execute(&mut *conn)
            .await?;
        if exists {
            // Tenant roles own nothing by design; `drop owned` clears anything a role created
            // where PUBLIC may create (the public schema before PostgreSQL 15), which would
            // otherwise block the drop.
            execute(&mut conn, format!("drop owned by {}", role.quoted())).await?;
            execute(&mut conn, format!("drop role if exists {}", role.quoted())).await?;
        }
        if on_delete == OnDelete::Delete {
            // Every tenant table references agentry.tenants with `on delete cascade`.
            sqlx::query("delete from agentry.tenants where name = $1")
                .bind(tenant)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

impl Provisioner for PgProvisioner {
    fn ensure<'a>(
        &'a self,
        tenant: &'a TenantRecord,
        existing: &'a ExistingCredentials,
    ) -> BoxFuture<'a, Result<Provisioned, DatabaseError>> {
        self.ensure_inner(tenant, existing).boxed()
    }

    fn remove<'a>(
        &'a self,
        tenant: &'a str,
        on_delete: OnDelete,
    ) -> BoxFuture<'a, Result<(), DatabaseError>> {
        self.remove_inner(tenant, on_delete).boxed()
    }
}

async fn execute(conn: &mut PgConnection, sql: String) -> Result<(), DatabaseError> {
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

async fn role_exists(conn: &mut PgConnection, role: &RoleName) -> Result<bool, DatabaseError> {
    Ok(
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(role.as_str())
            .fetch_one(conn)
            .await?,
    )
}

/// Inserts or updates the tenant row; an unchanged row is not written.
async fn upsert_tenant(
    conn: &mut PgConnection,
    tenant: &TenantRecord,
) -> Result<Uuid, DatabaseError> {
    let written: Option<Uuid> = sqlx::query_scalar(
        "insert into agentry.tenants (id, name, display_name, plan, suspended)
         values ($1, $2, $3, $4, $5)
         on conflict (name) do update
           set display_name = excluded.display_name, plan = excluded.plan,
               suspended = excluded.suspended, updated_at = now()
           where (tenants.display_name, tenants.plan, tenants.suspended)
                 is distinct from (excluded.display_name, excluded.plan, excluded.suspended)
         returning id",
    )
    .bind(Uuid::now_v7())
    .bind(&tenant.name)
    .bind(&tenant.display_name)
    .bind(&tenant.plan)
    .bind(tenant.suspended)
    .fetch_optional(&mut *conn)
    .await?;
    match written {
        Some(id) => Ok(id),
        None => Ok(
            sqlx::query_scalar("select id from agentry.tenants where name = $1")
                .bind(&tenant.name)
                .fetch_one(conn)
                .await?,
        ),
    }
}

/// Creates the login role, or re-passwords it when the Secret lost the password; returns the
/// password and whether it is new.
async fn ensure_role(
    conn: &mut PgConnection,
    role: &RoleName,
    existing: &ExistingCredentials,
) -> Result<(String, bool), DatabaseError> {
    let kept = existing.password.clone().filter(|p| !p.is_empty());
    let rotated = kept.is_none();
    let password = kept.unwrap_or_else(generate_password);
    let current: Option<(bool, bool, bool)> = sqlx::query_as(
        "select rolcanlogin, rolsuper, rolbypassrls from pg_roles where rolname = $1",
    )
    .bind(role.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    // Spelled out so that a role tampered with (superuser, BYPASSRLS) is put right.
    let attributes = "login nosuperuser nobypassrls nocreatedb nocreaterole noreplication";
    match current {
        None => {
            execute(
                conn,
                format!(
                    "create role {} {attributes} password {}",
                    role.quoted(),
                    quote_literal(&password)
                ),
            )
            .await?;
        }
        Some(_) if rotated => {
            execute(
                conn,
                format!(
                    "alter role {} {attributes} password {}",
                    role.quoted(),
                    quote_literal(&password)
                ),
            )
            .await?;
        }
        Some((login, superuser, bypass)) if !login || superuser || bypass => {
            execute(conn, format!("alter role {} {attributes}", role.quoted())).await?;
        }
        Some(_) => {}
    }
    let member: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_auth_members m
                          join pg_roles g on g.oid = m.roleid
                          join pg_roles r on r.oid = m.member
                         where g.rolname = $1 and r.rolname = $2)",
    )
    .bind(APP_ROLE)
    .bind(role.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if !member {
        execute(conn, format!("grant {APP_ROLE} to {}", role.quoted())).await?;
    }
    Ok((password, rotated))
}

/// Maps the role to the tenant (not shared); an unchanged mapping is not written.
async fn ensure_mapping(
    conn: &mut PgConnection,
    role: &RoleName,
    tenant_id: Uuid,
) -> Result<(), DatabaseError> {
    sqlx::query(
        "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, $2, false)
         on conflict (role_name) do update set tenant_id = excluded.tenant_id, shared = false
           where (tenant_roles.tenant_id, tenant_roles.shared) is distinct from (excluded.tenant_id, false)",
    )
    .bind(role.as_str())
    .bind(tenant_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps the Secret's bootstrap key (restoring its row if the database lost it), or creates a
/// new one and revokes earlier bootstrap keys whose plaintext is gone with the Secret.
async fn ensure_admin_key(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    existing: Option<&str>,
) -> Result<(String, bool), DatabaseError> {
    if let Some(key) = existing
        && let Some((key_id, secret)) = parse_api_key(key)
    {
        let owner: Option<Uuid> =
            sqlx::query_scalar("select tenant_id from agentry.api_keys where key_id = $1")
                .bind(key_id)
                .fetch_optional(&mut *conn)
                .await?;
        match owner {
            // Kept as it is, revoked or not: revoking the bootstrap key is the tenant's call.
            Some(owner) if owner == tenant_id => return Ok((key.to_owned(), false)),
            None => {
                insert_key(&mut *conn, tenant_id, key_id, &hash_secret(secret)).await?;
                return Ok((key.to_owned(), false));
            }
            // The key id belongs to another tenant: never reuse it.
            Some(_) => {}
        }
    }
    sqlx::query(
        "update agentry.api_keys set revoked_at = now()
         where tenant_id = $1 and name = $2 and revoked_at is null",
    )
    .bind(tenant_id)
    .bind(BOOTSTRAP_KEY_NAME)
    .execute(&mut *conn)
    .await?;
    let key = generate_api_key();
    insert_key(conn, tenant_id, &key.key_id, &key.secret_hash).await?;
    Ok((key.plaintext, true))
}

async fn insert_key(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    key_id: &str,
    secret_hash: &[u8],
) -> Result<(), DatabaseError> {
    sqlx::query(
        "insert into agentry.api_keys (tenant_id, id, key_id, secret_hash, name, scopes)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant_id)
    .bind(Uuid::now_v7())
    .bind(key_id)
    .bind(secret_hash)
    .bind(BOOTSTRAP_KEY_NAME)
    .bind(vec![ADMIN_SCOPE])
    .execute(conn)
    .await?;
    Ok(())
}
