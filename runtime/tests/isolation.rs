//! Tenant isolation against a real PostgreSQL (see docs/data.md): the cross-tenant matrix over
//! every tenant table, roles without a mapping, one pooled backend shared by tenants in dev
//! mode, a lint of the catalog, and the runtime's refusal of roles that could bypass RLS.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed setup step fails the test"
)]

mod isolation_support;

use std::collections::BTreeMap;

use agentry_runtime::db::{Db, DbError, RoleMode};
use agentry_runtime::tenancy::TenantId;
use isolation_support::sql::{
    Outcome, Privileges, Report, count, exec, fingerprints, granted, own_rows, policy_count,
    tenant_tables,
};
use isolation_support::{Harness, lint, with_harness};
use rand::RngExt as _;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// One row per tenant table for tenant `{tenant}`; `{id}` is one fresh uuid per call, shared by
/// all tables so that a child row finds its parent; `{n}` keeps non-uuid keys distinct. Parents
/// come first. A table with a `tenant_id` column missing here fails every test that seeds:
/// a new tenant table cannot escape the matrix silently.
const SEEDS: &[(&str, &str)] = &[
    (
        "tenant_roles",
        "insert into agentry.tenant_roles (role_name, tenant_id) values ('seed_{id}', '{tenant}')",
    ),
    (
        "api_keys",
        "insert into agentry.api_keys (tenant_id, id, key_id, secret_hash, name, scopes)
         values ('{tenant}', '{id}', '{id}', '\\x00'::bytea, 'seed', '{chat}')",
    ),
    (
        "conversations",
        "insert into agentry.conversations (tenant_id, id, title) values ('{tenant}', '{id}', 'seed')",
    ),
    (
        "messages",
        "insert into agentry.messages (tenant_id, id, conversation_id, role, content)
         values ('{tenant}', '{id}', '{id}', 'user', 'seed')",
    ),
    (
        "events",
        "insert into agentry.events (tenant_id, id, type, version, data)
         values ('{tenant}', '{id}', 'seed.created', 1, '{}')",
    ),
    (
        "event_outbox",
        "insert into agentry.event_outbox (tenant_id, event_id) values ('{tenant}', '{id}')",
    ),
    (
        "usage_records",
        "insert into agentry.usage_records (tenant_id, id, source, cost_micros)
         values ('{tenant}', '{id}', 'seed', 1500)",
    ),
    (
        "budget_periods",
        "insert into agentry.budget_periods (tenant_id, period, limit_micros)
         values ('{tenant}', (date '2025-01-01' + interval '{n} month')::date, 1000000)",
    ),
    (
        "budget_leases",
        "insert into agentry.budget_leases (tenant_id, period, holder, amount_micros)
         values ('{tenant}', (date '2025-01-01' + interval '{n} month')::date, 'seed', 10)",
    ),
    (
        "tool_approvals",
        "insert into agentry.tool_approvals
           (tenant_id, id, conversation_id, message_id, tool_call_id, tool, arguments, agent)
         values ('{tenant}', '{id}', '{id}', '{id}', 'call', 'seed', '{}', 'seed')",
    ),
    (
        "workflow_runs",
        "insert into agentry.workflow_runs
           (tenant_id, id, workflow, revision, spec, input, cursor, started_by, principal, deadline)
         values ('{tenant}', '{id}', 'seed', 'r1', '{}', '{}', '{}', 'seed', '{}', now())",
    ),
    (
        "workflow_steps",
        "insert into agentry.workflow_steps
           (tenant_id, run_id, seq, node, kind, visit, status, started_at, finished_at)
         values ('{tenant}', '{id}', 0, 'seed', 'tool', 1, 'succeeded', now(), now())",
    ),
];

/// Indexes on tenant tables that do not lead with `tenant_id`, and why.
const INDEX_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "agentry.api_keys_key_id_key",
        "a presented key names no tenant until agentry.lookup_api_key finds it by key id; key ids \
         are random, so the global uniqueness reveals nothing",
    ),
    (
        "agentry.tenant_roles_pkey",
        "the mapping is found by session role, the very thing that decides the tenant",
    ),
];

fn seed_sql(sql: &str, tenant: Uuid, id: Uuid, n: u32) -> String {
    sql.replace("{tenant}", &tenant.to_string())
        .replace("{id}", &id.to_string())
        .replace("{n}", &n.to_string())
}

/// Seeds one row for `tenant` in every tenant table; returns the row id used.
async fn seed_all(h: &Harness, tenant: Uuid, n: u32) -> Uuid {
    let tables = tenant_tables(&h.admin).await;
    let missing: Vec<&String> = tables
        .iter()
        .filter(|t| !SEEDS.iter().any(|(s, _)| s == t))
        .collect();
    assert!(
        missing.is_empty(),
        "tenant table(s) {missing:?} have no seed in SEEDS (runtime/tests/isolation.rs): add \
         one so that the cross-tenant matrix covers them"
    );
    let stale: Vec<&str> = SEEDS
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| !tables.iter().any(|t| t == s))
        .collect();
    assert!(
        stale.is_empty(),
        "SEEDS names tables that are gone: {stale:?}"
    );
    let id = Uuid::now_v7();
    for (_, sql) in SEEDS {
        h.sql(&seed_sql(sql, tenant, id, n)).await;
    }
    id
}

/// Reads of tenant `b` by a session of tenant `a` (after whatever tampering the caller did).
/// Tables the application role cannot read are skipped: the refusal is asserted elsewhere, and
/// here it would abort a transaction the caller opened.
async fn reads_only_own(
    h: &Harness,
    conn: &mut PgConnection,
    a: Uuid,
    b: Uuid,
    context: &str,
    report: &mut Report,
) {
    for table in tenant_tables(&h.admin).await {
        if !Privileges::of(&h.admin, &table).await.select {
            continue;
        }
        let t = format!("agentry.{table}");
        let got = count(
            conn,
            &format!("select count(*) from {t} where tenant_id = '{b}'"),
        )
        .await;
        report.check(
            format_args!("{context}: {table}: SELECT other tenant"),
            got,
            Outcome::Rows(0),
        );
        let own = own_rows(&h.admin, &table, a).await;
        let got = count(conn, &format!("select count(*) from {t}")).await;
        report.check(
            format_args!("{context}: {table}: SELECT count(*) of the whole table"),
            got,
            Outcome::Rows(own),
        );
    }
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn cross_tenant_matrix(pool: PgPool) {
    with_harness(pool, async |h| {
        let (a, b) = (h.tenant().await, h.tenant().await);
        let (role_a, role_b) = (h.tenant_role(a).await, h.tenant_role(b).await);
        let a_row = seed_all(h, a, 0).await;
        let b_row = seed_all(h, b, 0).await;
        let (before_a, before_b) = (
            fingerprints(&h.admin, a).await,
            fingerprints(&h.admin, b).await,
        );
        assert!(before_b.values().all(|(n, _)| *n >= 1), "{before_b:?}");
        let mut report = Report::default();
        let mut conn = h.connection_as(&role_a).await;

        for table in tenant_tables(&h.admin).await {
            let p = Privileges::of(&h.admin, &table).await;
            let t = format!("agentry.{table}");
            let seed = SEEDS
                .iter()
                .find(|(s, _)| *s == table)
                .map(|(_, sql)| *sql)
                .unwrap();
            let own = own_rows(&h.admin, &table, a).await;
            assert!(own >= 1, "{table}: tenant A has no row to act on");
            let mut check =
                |what: &str, got, want| report.check(format_args!("{table}: {what}"), got, want);

            let got = count(
                &mut conn,
                &format!("select count(*) from {t} where tenant_id = '{b}'"),
            )
            .await;
            check("SELECT B's rows", got, granted(p.select, Outcome::Rows(0)));
            let got = count(&mut conn, &format!("select count(*) from {t}")).await;
            check(
                "SELECT count(*) of the whole table",
                got,
                granted(p.select, Outcome::Rows(own)),
            );
            let got = exec(&mut conn, &seed_sql(seed, b, Uuid::now_v7(), 2)).await;
            check(
                "INSERT a row for B",
                got,
                granted(p.insert, Outcome::RlsViolation),
            );
            let got = exec(
                &mut conn,
                &format!("update {t} set tenant_id = tenant_id where tenant_id = '{b}'"),
            )
            .await;
            check("UPDATE B's rows", got, granted(p.update, Outcome::Rows(0)));
            let got = exec(
                &mut conn,
                &format!("update {t} set tenant_id = '{b}' where tenant_id = '{a}'"),
            )
            .await;
            check(
                "UPDATE own rows into B",
                got,
                granted(p.update, Outcome::RlsViolation),
            );
            let got = exec(
                &mut conn,
                &format!("delete from {t} where tenant_id = '{b}'"),
            )
            .await;
            check("DELETE B's rows", got, granted(p.delete, Outcome::Rows(0)));

            // Positive controls, rolled back: the same statements work on A's own rows, so
            // the zeros above come from isolation and not from a role that can do nothing.
            exec(&mut conn, "begin").await;
            let got = exec(
                &mut conn,
                &format!("update {t} set tenant_id = tenant_id where tenant_id = '{a}'"),
            )
            .await;
            check(
                "UPDATE own rows",
                got,
                granted(p.update, Outcome::Rows(own)),
            );
            exec(&mut conn, "rollback; begin").await;
            let got = exec(
                &mut conn,
                &format!("delete from {t} where tenant_id = '{a}'"),
            )
            .await;
            check(
                "DELETE own rows",
                got,
                granted(p.delete, Outcome::Rows(own)),
            );
            exec(&mut conn, "rollback").await;
        }
        // Positive control for INSERT: a whole set of rows for A, parents first.
        exec(&mut conn, "begin").await;
        let fresh = Uuid::now_v7();
        for (table, sql) in SEEDS {
            if Privileges::of(&h.admin, table).await.insert {
                let got = exec(&mut conn, &seed_sql(sql, a, fresh, 1)).await;
                report.check(
                    format_args!("{table}: INSERT own row"),
                    got,
                    Outcome::Rows(1),
                );
            }
        }
        exec(&mut conn, "rollback").await;

        // The tenant row itself: visible for A only, and read-only.
        let got = count(
            &mut conn,
            &format!("select count(*) from agentry.tenants where id = '{b}'"),
        )
        .await;
        report.check("tenants: SELECT B", got, Outcome::Rows(0));
        let got = count(&mut conn, "select count(*) from agentry.tenants").await;
        report.check("tenants: SELECT all", got, Outcome::Rows(1));
        for id in [a, b] {
            let got = exec(
                &mut conn,
                &format!(
                    "update agentry.tenants set suspended = false, name = 'taken' where id = '{id}'"
                ),
            )
            .await;
            report.check("tenants: UPDATE", got, Outcome::PermissionDenied);
        }
        // API key lookup (SECURITY DEFINER, so RLS does not filter it): A's key only.
        let got = count(
            &mut conn,
            &format!("select count(*) from agentry.lookup_api_key('{b_row}')"),
        )
        .await;
        report.check("lookup_api_key: B's key", got, Outcome::Rows(0));
        let got = count(
            &mut conn,
            &format!("select count(*) from agentry.lookup_api_key('{a_row}')"),
        )
        .await;
        report.check("lookup_api_key: own key", got, Outcome::Rows(1));
        // Planner statistics hold sample values of every column; RLS hides them.
        h.sql("analyze").await;
        let got = count(
            &mut conn,
            "select count(*) from pg_stats where schemaname = 'agentry'",
        )
        .await;
        report.check("pg_stats of agentry tables", got, Outcome::Rows(0));
        let visible: i64 =
            sqlx::query_scalar("select count(*) from pg_stats where schemaname = 'agentry'")
                .fetch_one(&h.admin)
                .await
                .unwrap();
        assert!(
            visible > 0,
            "the superuser should see statistics after analyze"
        );

        // Tampering with the session: the setting is only read for shared roles, and
        // SET ROLE does not change session_user, which the mapping follows.
        let tampering = [
            format!("set agentry.tenant_id = '{b}'"),
            format!("select set_config('agentry.tenant_id', '{b}', false)"),
            format!("begin; select set_config('agentry.tenant_id', '{b}', true)"),
            "rollback; set role agentry_app".to_owned(),
        ];
        for sql in &tampering {
            let got = exec(&mut conn, sql).await;
            assert!(matches!(got, Outcome::Rows(_)), "{sql}: {got:?}");
            reads_only_own(h, &mut conn, a, b, sql, &mut report).await;
        }
        let got = exec(
            &mut conn,
            &format!("reset role; set session authorization \"{}\"", role_b.name),
        )
        .await;
        report.check(
            "SET SESSION AUTHORIZATION to B's role",
            got,
            Outcome::PermissionDenied,
        );
        conn.close().await.unwrap();

        let (after_a, after_b) = (
            fingerprints(&h.admin, a).await,
            fingerprints(&h.admin, b).await,
        );
        assert_eq!(before_b, after_b, "B's rows changed");
        assert_eq!(
            before_a, after_a,
            "A's rows changed (positive controls are rolled back)"
        );
        report.assert_clean();
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn mapping_follows_the_login_role(pool: PgPool) {
    with_harness(pool, async |h| {
        let (a, b) = (h.tenant().await, h.tenant().await);
        let (role_a, role_b) = (h.tenant_role(a).await, h.tenant_role(b).await);
        seed_all(h, a, 0).await;
        seed_all(h, b, 0).await;
        // An operator mistake: A's role may SET ROLE to B's. Privileges follow current_user,
        // but the tenant follows session_user, which SET ROLE does not change.
        h.sql(&format!("grant \"{}\" to \"{}\"", role_b.name, role_a.name))
            .await;
        let mut conn = h.connection_as(&role_a).await;
        let got = exec(&mut conn, &format!("set role \"{}\"", role_b.name)).await;
        assert_eq!(got, Outcome::Rows(0));
        let user: String = sqlx::query_scalar("select current_user::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(user, role_b.name);
        let mut report = Report::default();
        reads_only_own(
            h,
            &mut conn,
            a,
            b,
            "after SET ROLE to B's role",
            &mut report,
        )
        .await;
        report.assert_clean();
        conn.close().await.unwrap();
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn unmapped_role_sees_nothing_and_is_refused(pool: PgPool) {
    with_harness(pool, async |h| {
        let (a, b) = (h.tenant().await, h.tenant().await);
        let key_a = seed_all(h, a, 0).await;
        seed_all(h, b, 0).await;
        let role = h.login_role("unmapped", "").await;
        let mut conn = h.connection_as(&role).await;
        let mut report = Report::default();
        for table in tenant_tables(&h.admin).await {
            let p = Privileges::of(&h.admin, &table).await;
            let got = count(&mut conn, &format!("select count(*) from agentry.{table}")).await;
            report.check(
                format_args!("{table}: SELECT"),
                got,
                granted(p.select, Outcome::Rows(0)),
            );
            let seed = SEEDS
                .iter()
                .find(|(s, _)| *s == table)
                .map(|(_, sql)| *sql)
                .unwrap();
            let got = exec(&mut conn, &seed_sql(seed, a, Uuid::now_v7(), 3)).await;
            report.check(
                format_args!("{table}: INSERT for a tenant"),
                got,
                granted(p.insert, Outcome::RlsViolation),
            );
        }
        let got = count(&mut conn, "select count(*) from agentry.tenants").await;
        report.check("tenants: SELECT", got, Outcome::Rows(0));
        let got = count(
            &mut conn,
            &format!("select count(*) from agentry.lookup_api_key('{key_a}')"),
        )
        .await;
        report.check("lookup_api_key", got, Outcome::Rows(0));
        let got = exec(&mut conn, &format!("set agentry.tenant_id = '{a}'")).await;
        report.check("SET agentry.tenant_id", got, Outcome::Rows(0));
        let got = count(&mut conn, "select count(*) from agentry.conversations").await;
        report.check(
            "conversations after SET agentry.tenant_id",
            got,
            Outcome::Rows(0),
        );
        conn.close().await.unwrap();
        report.assert_clean();

        let err = Db::from_pool(h.pool_as(&role, 1).await).await.unwrap_err();
        assert!(
            matches!(&err, DbError::Unmapped(r) if *r == role.name),
            "{err:?}"
        );
        assert!(err.to_string().contains("not mapped to a tenant"), "{err}");
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn shared_role_pooled_backend_never_leaks(pool: PgPool) {
    with_harness(pool, async |h| {
        let (a, b) = (h.tenant().await, h.tenant().await);
        seed_all(h, a, 0).await;
        let key_b = seed_all(h, b, 0).await;
        let shared = h.shared_role().await;
        // One connection: every transaction below runs on the same backend.
        let pool = h.pool_as(&shared, 1).await;
        let db = Db::from_pool(pool.clone()).await.unwrap();
        assert_eq!(db.mode(), RoleMode::Shared);
        let mut readable = Vec::new();
        for table in tenant_tables(&h.admin).await {
            if Privileges::of(&h.admin, &table).await.select {
                readable.push(table);
            }
        }
        assert!(readable.len() >= 8, "{readable:?}");
        let backend: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&pool).await.unwrap();
        let mut committed = BTreeMap::from([(a, 0_i64), (b, 0_i64)]);

        for i in 0..30 {
            let (tenant, other) = if i % 2 == 0 { (a, b) } else { (b, a) };
            let mut tx = db.begin(TenantId(tenant)).await.unwrap();
            let (pid, setting): (i32, String) =
                sqlx::query_as("select pg_backend_pid(), current_setting('agentry.tenant_id')")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            assert_eq!((pid, setting), (backend, tenant.to_string()), "round {i}");
            for table in &readable {
                let (all, own): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
                    "select count(*), count(*) filter (where tenant_id = '{tenant}') from agentry.{table}"
                )))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                assert!(all >= 1 && all == own, "round {i}: {table}: {all} rows, {own} of the tenant");
            }
            sqlx::query("insert into agentry.conversations (tenant_id, id) values ($1, $2)")
                .bind(tenant)
                .bind(Uuid::now_v7())
                .execute(&mut *tx)
                .await
                .unwrap();
            if i % 5 == 4 {
                // Writing for the other tenant inside this tenant's transaction is refused.
                let got = Outcome::of(
                    sqlx::query("insert into agentry.conversations (tenant_id, id) values ($1, $2)")
                        .bind(other)
                        .bind(Uuid::now_v7())
                        .execute(&mut *tx)
                        .await
                        .map(|r| r.rows_affected()),
                );
                assert_eq!(got, Outcome::RlsViolation, "round {i}");
            }
            // Commit, roll back, or drop (sqlx rolls back on the next use of the connection).
            match i % 3 {
                0 if i % 5 != 4 => {
                    tx.commit().await.unwrap();
                    *committed.entry(tenant).or_default() += 1;
                }
                1 => tx.rollback().await.unwrap(),
                _ => drop(tx),
            }
            // Outside any transaction, on the same backend: no tenant, so no rows.
            let (pid, setting): (i32, Option<String>) =
                sqlx::query_as("select pg_backend_pid(), current_setting('agentry.tenant_id', true)")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(pid, backend, "round {i}: the pool opened another backend");
            assert!(setting.as_deref().unwrap_or("").is_empty(), "round {i}: setting leaked: {setting:?}");
            for table in &readable {
                let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("select count(*) from agentry.{table}")))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(n, 0, "round {i}: {table} visible outside a transaction");
            }
        }
        // The committed writes landed in the tenant that wrote them.
        for (tenant, n) in committed {
            let rows = own_rows(&h.admin, "conversations", tenant).await;
            assert_eq!(rows, u64::try_from(1 + n).unwrap(), "tenant {tenant}");
        }
        // By design the shared role authenticates any tenant's key (dev mode serves them all).
        let found: i64 = sqlx::query_scalar("select count(*) from agentry.lookup_api_key($1)")
            .bind(key_b.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(found, 1);
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn catalog_lint(pool: PgPool) {
    with_harness(pool, async |h| {
        let admin = &h.admin;
        let tables = tenant_tables(admin).await;
        assert!(tables.len() >= 9, "{tables:?}");
        let mut problems = lint::problems(admin, &tables, INDEX_EXCEPTIONS).await;

        // A provisioned tenant role passes the runtime's own checks (not a superuser, no
        // BYPASSRLS, owner of nothing).
        let a = h.tenant().await;
        let role = h.tenant_role(a).await;
        match Db::from_pool(h.pool_as(&role, 1).await).await {
            Ok(db) => assert_eq!(db.mode(), RoleMode::Tenant(TenantId(a))),
            Err(e) => problems.push(format!("a provisioned tenant role is refused: {e}")),
        }

        // The number of policies does not depend on the number of tenants.
        let before = policy_count(admin).await;
        let c = h.tenant().await;
        h.tenant_role(c).await;
        seed_all(h, c, 0).await;
        assert_eq!(policy_count(admin).await, before, "a tenant added policies");

        assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn runtime_refuses_roles_that_bypass_rls(pool: PgPool) {
    with_harness(pool, async |h| {
        let tenant = h.tenant().await;
        let map = async |role: &isolation_support::Role| {
            sqlx::query("insert into agentry.tenant_roles (role_name, tenant_id) values ($1, $2)")
                .bind(&role.name)
                .bind(tenant)
                .execute(&h.admin)
                .await
                .unwrap();
        };
        let refused = async |pool: PgPool, role: &str, reason: &str| {
            let err = Db::from_pool(pool).await.unwrap_err();
            let DbError::UnsafeRole { role: got, .. } = &err else {
                panic!("{role}: want UnsafeRole, got {err:?}");
            };
            assert_eq!(got, role);
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("refusing to run as database role {role:?}: "))
                    && message.contains(reason)
                    && message.contains("docs/data.md"),
                "{message}"
            );
        };

        // The superuser the tests run as.
        refused(h.admin.clone(), "postgres", "it is a superuser").await;

        let bypass = h.login_role("bypass", "bypassrls").await;
        map(&bypass).await;
        refused(
            h.pool_as(&bypass, 1).await,
            &bypass.name,
            "it has BYPASSRLS",
        )
        .await;

        let creator = h.login_role("createrole", "createrole").await;
        map(&creator).await;
        refused(h.pool_as(&creator, 1).await, &creator.name, "CREATEROLE").await;

        // Members of a superuser or BYPASSRLS role can SET ROLE to it.
        for attribute in ["superuser", "bypassrls"] {
            let powerful = h.unique_role_name("powerful");
            h.sql(&format!("create role \"{powerful}\" nologin {attribute}"))
                .await;
            let member = h.login_role("member", "").await;
            map(&member).await;
            h.sql(&format!("grant \"{powerful}\" to \"{}\"", member.name))
                .await;
            let reason =
                format!("it is a member of {powerful}, which is a superuser or has BYPASSRLS");
            refused(h.pool_as(&member, 1).await, &member.name, &reason).await;
        }

        // Owners, directly or through membership, of a table, a function or the schema.
        let owner = h.unique_role_name("owner");
        h.sql(&format!("create role \"{owner}\" nologin")).await;
        h.sql(&format!(
            "alter table agentry.conversations owner to \"{owner}\""
        ))
        .await;
        let member = h.login_role("member", "").await;
        map(&member).await;
        h.sql(&format!("grant \"{owner}\" to \"{}\"", member.name))
            .await;
        refused(
            h.pool_as(&member, 1).await,
            &member.name,
            "it owns relation agentry.conversations",
        )
        .await;
        h.sql("alter table agentry.conversations owner to postgres")
            .await;

        let direct = h.login_role("owner", "").await;
        map(&direct).await;
        h.sql(&format!(
            "alter function agentry.lookup_api_key(text) owner to \"{}\"",
            direct.name
        ))
        .await;
        refused(
            h.pool_as(&direct, 1).await,
            &direct.name,
            "it owns function agentry.lookup_api_key(text)",
        )
        .await;
        h.sql("alter function agentry.lookup_api_key(text) owner to postgres")
            .await;
        h.sql(&format!(
            "alter schema agentry owner to \"{}\"",
            direct.name
        ))
        .await;
        refused(
            h.pool_as(&direct, 1).await,
            &direct.name,
            "it owns schema agentry",
        )
        .await;
        h.sql("alter schema agentry owner to postgres").await;

        // After the ownership is handed back, the same role is accepted.
        let db = Db::from_pool(h.pool_as(&direct, 1).await).await.unwrap();
        assert_eq!(db.mode(), RoleMode::Tenant(TenantId(tenant)));
        let other = TenantId(h.tenant().await);
        let err = db.begin(other).await.unwrap_err();
        assert!(matches!(err, DbError::WrongTenant { .. }), "{err:?}");

        // A database that was never migrated.
        let empty = h.scratch_database().await;
        let plain = h.login_role("plain", "").await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(h.options_as(&plain).database(&empty))
            .await
            .unwrap();
        let err = Db::from_pool(pool.clone()).await.unwrap_err();
        pool.close().await;
        assert!(matches!(err, DbError::NotMigrated), "{err:?}");
        assert!(err.to_string().contains("agentry-runtime migrate"), "{err}");
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn policy_count_is_constant_for_random_tenants(pool: PgPool) {
    with_harness(pool, async |h| {
        let before = policy_count(&h.admin).await;
        let n = rand::rng().random_range(3..=8);
        let mut tenants = Vec::new();
        for _ in 0..n {
            let tenant = h.tenant().await;
            let role = h.tenant_role(tenant).await;
            let rows: i32 = rand::rng().random_range(0..=4);
            sqlx::query(
                "insert into agentry.conversations (tenant_id, id)
                 select $1, gen_random_uuid() from generate_series(1, $2)",
            )
            .bind(tenant)
            .bind(rows)
            .execute(&h.admin)
            .await
            .unwrap();
            assert_eq!(policy_count(&h.admin).await, before, "{n} tenants");
            tenants.push((tenant, role, i64::from(rows)));
        }
        for (tenant, role, rows) in &tenants {
            let mut conn = h.connection_as(role).await;
            let (all, own): (i64, i64) = sqlx::query_as(
                "select count(*), count(*) filter (where tenant_id = $1) from agentry.conversations",
            )
            .bind(tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!((all, own), (*rows, *rows), "tenant {tenant} of {n}");
            conn.close().await.unwrap();
        }
    })
    .await;
}
