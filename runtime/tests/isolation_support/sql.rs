//! SQL helpers of the isolation tests: the catalog's tenant tables, the application role's
//! privileges, statements classified into [`Outcome`]s, and fingerprints of a tenant's rows.

use std::collections::BTreeMap;

use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use uuid::Uuid;

/// Base tables of schema `agentry` with a `tenant_id` column.
pub async fn tenant_tables(admin: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select c.table_name::text from information_schema.columns c
           join information_schema.tables t using (table_schema, table_name)
          where c.table_schema = 'agentry' and c.column_name = 'tenant_id'
            and t.table_type = 'BASE TABLE'
          order by 1",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

/// The application role's privileges on a table.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    /// SELECT.
    pub select: bool,
    /// INSERT.
    pub insert: bool,
    /// UPDATE.
    pub update: bool,
    /// DELETE.
    pub delete: bool,
}

impl Privileges {
    /// Reads them from the catalog.
    pub async fn of(admin: &PgPool, table: &str) -> Self {
        let (select, insert, update, delete) = sqlx::query_as(
            "select has_table_privilege('agentry_app', $1, 'SELECT'),
                    has_table_privilege('agentry_app', $1, 'INSERT'),
                    has_table_privilege('agentry_app', $1, 'UPDATE'),
                    has_table_privilege('agentry_app', $1, 'DELETE')",
        )
        .bind(format!("agentry.{table}"))
        .fetch_one(admin)
        .await
        .unwrap();
        Self {
            select,
            insert,
            update,
            delete,
        }
    }
}

/// `want` when the app role holds the privilege; otherwise the statement must be refused.
pub fn granted(privilege: bool, want: Outcome) -> Outcome {
    if privilege {
        want
    } else {
        Outcome::PermissionDenied
    }
}

pub async fn count(conn: &mut PgConnection, sql: &str) -> Outcome {
    Outcome::of(
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
            .fetch_one(conn)
            .await,
    )
}

pub async fn exec(conn: &mut PgConnection, sql: &str) -> Outcome {
    Outcome::of(
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(conn)
            .await
            .map(|r| r.rows_affected()),
    )
}

/// Collects every mismatch so that one run reports the whole matrix.
#[derive(Default)]
pub struct Report(Vec<String>);

impl Report {
    /// Records a mismatch of `got` and `want`.
    pub fn check(&mut self, what: impl std::fmt::Display, got: Outcome, want: Outcome) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Fails the test with every mismatch.
    pub fn assert_clean(self) {
        assert!(self.0.is_empty(), "\n{}", self.0.join("\n"));
    }
}

/// Per table, a fingerprint of `tenant`'s rows as the superuser sees them.
pub async fn fingerprints(admin: &PgPool, tenant: Uuid) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for table in tenant_tables(admin).await {
        let row: (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
            "select count(*), coalesce(md5(string_agg(t::text, '|' order by t::text)), '')
               from agentry.{table} t where tenant_id = '{tenant}'"
        )))
        .fetch_one(admin)
        .await
        .unwrap();
        out.insert(table, row);
    }
    out
}

pub async fn own_rows(admin: &PgPool, table: &str, tenant: Uuid) -> u64 {
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "select count(*) from agentry.{table} where tenant_id = '{tenant}'"
    )))
    .fetch_one(admin)
    .await
    .unwrap();
    u64::try_from(n).unwrap()
}

/// What a statement did, as the matrix compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded: rows affected, or the count it selected.
    Rows(u64),
    /// Refused by a policy's WITH CHECK ("new row violates row-level security policy").
    RlsViolation,
    /// Refused for lack of a privilege on the table.
    PermissionDenied,
    /// Any other error (never expected by the matrix).
    Other(String),
}

impl Outcome {
    /// Classifies a statement's result.
    pub fn of<T: TryInto<u64>>(result: Result<T, sqlx::Error>) -> Self {
        match result {
            Ok(n) => match n.try_into() {
                Ok(n) => Self::Rows(n),
                Err(_) => Self::Other("negative count".into()),
            },
            Err(sqlx::Error::Database(e)) if e.message().contains("row-level security") => {
                Self::RlsViolation
            }
            Err(sqlx::Error::Database(e)) if e.message().starts_with("permission denied") => {
                Self::PermissionDenied
            }
            Err(e) => Self::Other(e.to_string()),
        }
    }
}

/// How many policies schema `agentry` has.
pub async fn policy_count(admin: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from pg_policies where schemaname = 'agentry'")
        .fetch_one(admin)
        .await
        .unwrap()
}
