//! Test harness for the isolation tests: uniquely named roles (roles are cluster-wide and other
//! test runs share the server), tenants, pools connected as a given role, and a cleanup that
//! runs whether the test passed or panicked.

pub mod lint;
pub mod sql;

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use futures::FutureExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// A login role created by the test.
#[derive(Debug, Clone)]
pub struct Role {
    /// Role name (unique across the cluster).
    pub name: String,
    /// Its password (the test server trusts local connections, but roles get one anyway).
    pub password: String,
}

/// The superuser pool of the test database plus everything to undo at the end.
pub struct Harness {
    /// Superuser pool on the test database (from `#[sqlx::test]`).
    pub admin: PgPool,
    roles: Mutex<Vec<String>>,
    pools: Mutex<Vec<PgPool>>,
    databases: Mutex<Vec<String>>,
}

/// Runs `body` with a harness, then closes its pools and drops its roles, even on panic (the
/// panic is resumed afterwards so the test still fails).
pub async fn with_harness(admin: PgPool, body: impl AsyncFnOnce(&Harness)) {
    let harness = Harness {
        admin,
        roles: Mutex::new(Vec::new()),
        pools: Mutex::new(Vec::new()),
        databases: Mutex::new(Vec::new()),
    };
    let outcome = AssertUnwindSafe(body(&harness)).catch_unwind().await;
    harness.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

impl Harness {
    /// A role name no other test (or test run) uses; registered for dropping.
    pub fn unique_role_name(&self, what: &str) -> String {
        let name = format!("agentry_iso_{what}_{}", Uuid::new_v4().simple());
        assert!(name.len() < 64, "role name too long: {name}");
        self.roles.lock().unwrap().push(name.clone());
        name
    }

    /// Creates a LOGIN role with `attributes` (e.g. `bypassrls`), a member of `agentry_app`.
    pub async fn login_role(&self, what: &str, attributes: &str) -> Role {
        let role = Role {
            name: self.unique_role_name(what),
            password: Uuid::new_v4().simple().to_string(),
        };
        self.sql(&format!(
            "create role \"{}\" login password '{}' {attributes}",
            role.name, role.password
        ))
        .await;
        self.sql(&format!("grant agentry_app to \"{}\"", role.name))
            .await;
        role
    }

    /// Inserts a tenant row with a random name; returns its id.
    pub async fn tenant(&self) -> Uuid {
        let id = Uuid::new_v4();
        let name = format!("t-{}", &id.simple().to_string()[..12]);
        sqlx::query("insert into agentry.tenants (id, name) values ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&self.admin)
            .await
            .unwrap();
        id
    }

    /// A tenant's login role, as the operator provisions it: LOGIN, member of `agentry_app`,
    /// mapped to the tenant in `agentry.tenant_roles`.
    pub async fn tenant_role(&self, tenant: Uuid) -> Role {
        let role = self.login_role("tenant", "").await;
        sqlx::query("insert into agentry.tenant_roles (role_name, tenant_id) values ($1, $2)")
            .bind(&role.name)
            .bind(tenant)
            .execute(&self.admin)
            .await
            .unwrap();
        role
    }

    /// A shared (dev mode) role: mapped with `shared = true` and no tenant.
    pub async fn shared_role(&self) -> Role {
        let role = self.login_role("shared", "").await;
        sqlx::query(
            "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, null, true)",
        )
        .bind(&role.name)
        .execute(&self.admin)
        .await
        .unwrap();
        role
    }

    /// Connection options for the test database as `role`.
    pub fn options_as(&self, role: &Role) -> PgConnectOptions {
        (*self.admin.connect_options())
            .clone()
            .username(&role.name)
            .password(&role.password)
    }

    /// A pool of at most `max` connections as `role`; closed by the cleanup.
    pub async fn pool_as(&self, role: &Role, max: u32) -> PgPool {
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .connect_with(self.options_as(role))
            .await
            .unwrap();
        self.pools.lock().unwrap().push(pool.clone());
        pool
    }

    /// One connection as `role`, for session-level tampering that must not reach a pool.
    pub async fn connection_as(&self, role: &Role) -> PgConnection {
        PgConnection::connect_with(&self.options_as(role))
            .await
            .unwrap()
    }

    /// Creates an empty database (no migrations); dropped by the cleanup.
    pub async fn scratch_database(&self) -> String {
        let name = format!("agentry_iso_empty_{}", Uuid::new_v4().simple());
        self.databases.lock().unwrap().push(name.clone());
        self.sql(&format!("create database \"{name}\"")).await;
        name
    }

    /// Runs trusted SQL (DDL built from generated names) as the superuser.
    pub async fn sql(&self, sql: &str) {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn cleanup(&self) {
        let pools = std::mem::take(&mut *self.pools.lock().unwrap());
        for pool in pools {
            pool.close().await;
        }
        let databases = std::mem::take(&mut *self.databases.lock().unwrap());
        for db in databases {
            let drop = format!("drop database if exists \"{db}\" with (force)");
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(drop))
                .execute(&self.admin)
                .await
            {
                eprintln!("cleanup: dropping database {db}: {e}");
            }
        }
        let roles = std::mem::take(&mut *self.roles.lock().unwrap());
        if roles.is_empty() {
            return;
        }
        let terminate = sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = any($1)",
        )
        .bind(&roles)
        .execute(&self.admin)
        .await;
        if let Err(e) = terminate {
            eprintln!("cleanup: terminating sessions: {e}");
        }
        for role in roles {
            // A test that failed half-way may leave the role owning objects or holding grants
            // in this database; hand them back so that the role can go.
            let sql = format!(
                "do $$ begin
                   if exists (select 1 from pg_roles where rolname = '{role}') then
                     execute 'reassign owned by \"{role}\" to ' || quote_ident(current_user);
                     execute 'drop owned by \"{role}\"';
                     execute 'drop role \"{role}\"';
                   end if;
                 end $$"
            );
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.admin).await {
                eprintln!("cleanup: dropping role {role}: {e}");
            }
        }
    }
}
