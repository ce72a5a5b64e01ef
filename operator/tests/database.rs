//! `PgProvisioner` against real PostgreSQL: each test gets its own database (migrated with the
//! runtime's migrations) and tenants with a random suffix, because roles are cluster-wide and
//! other test runs share the server. Roles are dropped and the database removed at the end,
//! whether the test passed or not.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on any database error"
)]

use std::panic::AssertUnwindSafe;
use std::str::FromStr as _;

use agentry_crds::tenant::OnDelete;
use agentry_operator::database::{
    BOOTSTRAP_KEY_NAME, ExistingCredentials, PgProvisioner, Provisioned, Provisioner, RoleName,
    TenantRecord, hash_secret, parse_api_key,
};
use futures::FutureExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgPool};
use uuid::Uuid;

fn server() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    PgConnectOptions::from_str(&url).expect("DATABASE_URL")
}

struct TestDb {
    name: String,
    pool: PgPool,
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("agentry_op_{}", Uuid::new_v4().simple());
        let mut admin = server()
            .database("postgres")
            .connect()
            .await
            .expect("connect");
        sqlx::raw_sql(AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        admin.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(server().database(&name))
            .await
            .expect("connect to test database");
        sqlx::migrate!("../runtime/migrations")
            .run(&pool)
            .await
            .expect("migrations");
        Self { name, pool }
    }

    /// Runs `body`, then drops the tenants' roles and the database even if `body` panicked.
    async fn run<F>(self, tenants: &[&str], body: F)
    where
        F: std::future::Future<Output = ()>,
    {
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        let provisioner = PgProvisioner::new(self.pool.clone());
        for t in tenants {
            let _ = provisioner.remove(t, OnDelete::Delete).await;
        }
        self.pool.close().await;
        if let Ok(mut admin) = server().database("postgres").connect().await {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "drop database if exists {} with (force)",
                self.name
            )))
            .execute(&mut admin)
            .await;
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..10])
}

fn record(name: &str) -> TenantRecord {
    TenantRecord {
        name: name.to_owned(),
        display_name: Some("Acme Corp".to_owned()),
        plan: Some("pro".to_owned()),
        suspended: false,
    }
}

fn kept(p: &Provisioned) -> ExistingCredentials {
    ExistingCredentials {
        password: Some(p.password.clone()),
        admin_api_key: Some(p.admin_api_key.clone()),
    }
}

async fn role_password(pool: &PgPool, role: &str) -> Option<String> {
    sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
        .bind(role)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten()
}

async fn role_exists(pool: &PgPool, role: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Connects as the tenant's role with its password.
async fn connect_as(database: &str, p: &Provisioned) -> sqlx::PgConnection {
    server()
        .database(database)
        .username(&p.role)
        .password(&p.password)
        .connect()
        .await
        .expect("connect as the tenant role")
}

#[tokio::test]
async fn create_provisions_row_role_membership_mapping_and_bootstrap_key() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let database = db.name.clone();
    let name = unique("acme");
    let tenants = [name.as_str()];
    db.run(&tenants, async {
        let provisioner = PgProvisioner::new(pool.clone());
        let p = provisioner
            .ensure(&record(&name), &ExistingCredentials::default())
            .await
            .unwrap();
        assert!(p.password_rotated && p.admin_key_created);
        assert_eq!(p.role, RoleName::for_tenant(&name).unwrap().as_str());

        let (id, display, plan, suspended): (Uuid, Option<String>, Option<String>, bool) =
            sqlx::query_as(
                "select id, display_name, plan, suspended from agentry.tenants where name = $1",
            )
            .bind(&name)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(id, p.tenant_id);
        assert_eq!((display.as_deref(), plan.as_deref(), suspended), (Some("Acme Corp"), Some("pro"), false));

        let (login, superuser, bypass): (bool, bool, bool) = sqlx::query_as(
            "select rolcanlogin, rolsuper, rolbypassrls from pg_roles where rolname = $1",
        )
        .bind(&p.role)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(login && !superuser && !bypass);
        let member: bool = sqlx::query_scalar("select pg_has_role($1, 'agentry_app', 'member')")
            .bind(&p.role)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(member);

        let (mapped, shared): (Option<Uuid>, bool) = sqlx::query_as(
            "select tenant_id, shared from agentry.tenant_roles where role_name = $1",
        )
        .bind(&p.role)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((mapped, shared), (Some(p.tenant_id), false));

        let (key_id, secret) = parse_api_key(&p.admin_api_key).unwrap();
        let (hash, scopes, key_name): (Vec<u8>, Vec<String>, String) = sqlx::query_as(
            "select secret_hash, scopes, name from agentry.api_keys where tenant_id = $1 and key_id = $2",
        )
        .bind(p.tenant_id)
        .bind(key_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(hash, hash_secret(secret));
        assert_eq!(scopes, ["admin"]);
        assert_eq!(key_name, BOOTSTRAP_KEY_NAME);

        // The role logs in and sees itself as the tenant.
        let mut conn = connect_as(&database, &p).await;
        let current: Option<Uuid> = sqlx::query_scalar("select agentry.current_tenant()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(current, Some(p.tenant_id));
        conn.close().await.ok();
    })
    .await;
}

#[tokio::test]
async fn ensuring_again_with_the_secret_changes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let name = unique("repeat");
    let tenants = [name.as_str()];
    db.run(&tenants, async {
        let provisioner = PgProvisioner::new(pool.clone());
        let first = provisioner
            .ensure(&record(&name), &ExistingCredentials::default())
            .await
            .unwrap();
        let updated_at = |pool: PgPool, name: String| async move {
            sqlx::query_scalar::<_, f64>(
                "select extract(epoch from updated_at)::float8 from agentry.tenants where name = $1",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let before = updated_at(pool.clone(), name.clone()).await;
        let hash_before = role_password(&pool, &first.role).await;

        let again = provisioner.ensure(&record(&name), &kept(&first)).await.unwrap();
        assert_eq!(again.tenant_id, first.tenant_id);
        assert_eq!(again.password, first.password);
        assert_eq!(again.admin_api_key, first.admin_api_key);
        assert!(!again.password_rotated && !again.admin_key_created);
        assert_eq!(updated_at(pool.clone(), name.clone()).await, before);
        assert_eq!(role_password(&pool, &first.role).await, hash_before);
        let keys: i64 = sqlx::query_scalar("select count(*) from agentry.api_keys where tenant_id = $1")
            .bind(first.tenant_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(keys, 1);

        // A changed spec updates the row, and suspension is written.
        let mut suspended = record(&name);
        suspended.suspended = true;
        suspended.plan = Some("enterprise".to_owned());
        provisioner.ensure(&suspended, &kept(&first)).await.unwrap();
        let (plan, is_suspended): (Option<String>, bool) =
            sqlx::query_as("select plan, suspended from agentry.tenants where name = $1")
                .bind(&name)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((plan.as_deref(), is_suspended), (Some("enterprise"), true));
    })
    .await;
}

#[tokio::test]
async fn a_lost_secret_rotates_the_password_and_the_bootstrap_key() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let name = unique("rotate");
    let tenants = [name.as_str()];
    db.run(&tenants, async {
        let provisioner = PgProvisioner::new(pool.clone());
        let first = provisioner
            .ensure(&record(&name), &ExistingCredentials::default())
            .await
            .unwrap();
        let hash_before = role_password(&pool, &first.role).await;

        // Only the password is gone: a new password, the same key.
        let partial = ExistingCredentials {
            password: None,
            admin_api_key: Some(first.admin_api_key.clone()),
        };
        let rotated = provisioner.ensure(&record(&name), &partial).await.unwrap();
        assert!(rotated.password_rotated && !rotated.admin_key_created);
        assert_ne!(rotated.password, first.password);
        assert_eq!(rotated.admin_api_key, first.admin_api_key);
        assert_ne!(role_password(&pool, &first.role).await, hash_before);

        // The whole Secret is gone: a new key too, and the old bootstrap key is revoked.
        let fresh = provisioner
            .ensure(&record(&name), &ExistingCredentials::default())
            .await
            .unwrap();
        assert!(fresh.admin_key_created);
        assert_ne!(fresh.admin_api_key, first.admin_api_key);
        let (old_id, _) = parse_api_key(&first.admin_api_key).unwrap();
        let (new_id, _) = parse_api_key(&fresh.admin_api_key).unwrap();
        let revoked = |key_id: String| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, bool>(
                    "select revoked_at is not null from agentry.api_keys where key_id = $1",
                )
                .bind(key_id)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        assert!(revoked(old_id.to_owned()).await);
        assert!(!revoked(new_id.to_owned()).await);
    })
    .await;
}

#[tokio::test]
async fn deletion_drops_the_role_and_keeps_or_deletes_rows_as_asked() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let database = db.name.clone();
    let retained = unique("retain");
    let deleted = unique("delete");
    let tenants = [retained.as_str(), deleted.as_str()];
    db.run(&tenants, async {
        let provisioner = PgProvisioner::new(pool.clone());
        let r = provisioner
            .ensure(&record(&retained), &ExistingCredentials::default())
            .await
            .unwrap();
        let d = provisioner
            .ensure(&record(&deleted), &ExistingCredentials::default())
            .await
            .unwrap();
        // An open session of the role is ended by the removal.
        let mut session = connect_as(&database, &r).await;

        provisioner
            .remove(&retained, OnDelete::Retain)
            .await
            .unwrap();
        provisioner
            .remove(&deleted, OnDelete::Delete)
            .await
            .unwrap();
        // Removing twice is fine.
        provisioner
            .remove(&retained, OnDelete::Retain)
            .await
            .unwrap();

        assert!(sqlx::query("select 1").execute(&mut session).await.is_err());
        for p in [&r, &d] {
            assert!(!role_exists(&pool, &p.role).await, "{}", p.role);
            let mapped: i64 = sqlx::query_scalar(
                "select count(*) from agentry.tenant_roles where role_name = $1",
            )
            .bind(&p.role)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(mapped, 0);
        }
        let rows = |id: Uuid| {
            let pool = pool.clone();
            async move {
                let tenants: i64 =
                    sqlx::query_scalar("select count(*) from agentry.tenants where id = $1")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                let keys: i64 = sqlx::query_scalar(
                    "select count(*) from agentry.api_keys where tenant_id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
                (tenants, keys)
            }
        };
        assert_eq!(rows(r.tenant_id).await, (1, 1), "Retain keeps the rows");
        assert_eq!(rows(d.tenant_id).await, (0, 0), "Delete removes them");

        // Recreating a retained tenant gets its data back under a new role.
        let back = provisioner
            .ensure(&record(&retained), &ExistingCredentials::default())
            .await
            .unwrap();
        assert_eq!(back.tenant_id, r.tenant_id);
    })
    .await;
}

#[tokio::test]
async fn a_tenant_role_reads_nothing_of_another_tenant() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let database = db.name.clone();
    let a = unique("alpha");
    let b = unique("beta");
    let tenants = [a.as_str(), b.as_str()];
    db.run(&tenants, async {
        let provisioner = PgProvisioner::new(pool.clone());
        let pa = provisioner
            .ensure(&record(&a), &ExistingCredentials::default())
            .await
            .unwrap();
        let pb = provisioner
            .ensure(&record(&b), &ExistingCredentials::default())
            .await
            .unwrap();
        for (p, title) in [(&pa, "alpha's"), (&pb, "beta's")] {
            sqlx::query(
                "insert into agentry.conversations (tenant_id, id, title) values ($1, $2, $3)",
            )
            .bind(p.tenant_id)
            .bind(Uuid::new_v4())
            .bind(title)
            .execute(&pool)
            .await
            .unwrap();
        }

        let mut conn = connect_as(&database, &pa).await;
        let titles: Vec<String> = sqlx::query_scalar("select title from agentry.conversations")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(titles, ["alpha's"]);
        let tenants: Vec<String> = sqlx::query_scalar("select name from agentry.tenants")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(tenants, std::slice::from_ref(&a));
        let others: i64 = sqlx::query_scalar(
            "select (select count(*) from agentry.api_keys where tenant_id = $1)
                  + (select count(*) from agentry.conversations where tenant_id = $1)",
        )
        .bind(pb.tenant_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(others, 0, "nothing of beta is visible to alpha");
        let own_keys: i64 = sqlx::query_scalar("select count(*) from agentry.api_keys")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(own_keys, 1);
        // Writing into another tenant is refused by the policy's check.
        let write = sqlx::query(
            "insert into agentry.conversations (tenant_id, id, title) values ($1, $2, 'x')",
        )
        .bind(pb.tenant_id)
        .bind(Uuid::new_v4())
        .execute(&mut conn)
        .await;
        assert!(write.is_err());
        // And the mapping table is not readable at all.
        assert!(
            sqlx::query("select * from agentry.tenant_roles")
                .execute(&mut conn)
                .await
                .is_err()
        );
        conn.close().await.ok();
    })
    .await;
}
