//! Shared fixtures of the limits and budget tests: tenants with a bundle, and PostgreSQL
//! tenant roles connected as the runtime connects (never as the superuser).

// Test code throughout: clippy's test allowances (unwrap, panic) apply to `cfg(test)` items.
#![cfg(test)]
#![allow(dead_code, reason = "each test crate uses a part of the fixtures")]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::LimitsConfig;
use agentry_runtime::billing::{BudgetConfig, Budgets, Reservation};
use agentry_runtime::db::Db;
use agentry_runtime::error::ApiError;
use agentry_runtime::gateway::limits::{LimitExceeded, Limiter};
use agentry_runtime::gateway::{Caller, Principal, Scope};
use agentry_runtime::tenancy::{TenantHandle, TenantId};
use futures::FutureExt as _;
use governor::clock::FakeRelativeClock;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Barrier;
use uuid::Uuid;

/// A bundle for tenant `name` with `limits`.
pub fn bundle(name: &str, limits: LimitsConfig) -> RuntimeBundle {
    let mut bundle: RuntimeBundle = serde_json::from_value(json!({
        "schemaVersion": 1,
        "hash": "",
        "tenant": {
            "name": name,
            "namespace": format!("tenant-{name}"),
            "suspended": false,
            "onDelete": "Retain",
            "limits": { "budgetAction": "Block" },
            "providers": {},
            "models": {},
            "auth": { "apiKeys": true },
            "egressAllowlist": []
        },
        "agents": {},
        "tools": {},
        "workflows": {},
        "flags": {}
    }))
    .unwrap();
    bundle.tenant.limits = limits;
    bundle
}

/// A tenant handle with a random id (no database row).
pub fn tenant(limits: LimitsConfig) -> Arc<TenantHandle> {
    let id = Uuid::new_v4();
    let name = format!("t-{}", &id.simple().to_string()[..12]);
    Arc::new(TenantHandle::new(TenantId(id), bundle(&name, limits)))
}

/// A caller presenting API key `id`.
pub fn key_caller(tenant: &Arc<TenantHandle>, id: Uuid) -> Caller {
    Caller {
        tenant: tenant.clone(),
        principal: Principal::ApiKey { id },
        scopes: vec![Scope::Chat],
    }
}

/// A caller who is end user `subject`.
pub fn user_caller(tenant: &Arc<TenantHandle>, subject: &str) -> Caller {
    Caller {
        tenant: tenant.clone(),
        principal: Principal::User {
            subject: subject.to_owned(),
        },
        scopes: vec![Scope::Chat],
    }
}

/// How the test's login role maps to tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    /// A tenant role (as in the cluster).
    Tenant,
    /// The shared role of dev mode.
    Shared,
}

/// A tenant row in the test database and a uniquely named login role for it.
pub struct PgTenant {
    pub handle: Arc<TenantHandle>,
    pub role: String,
    admin: PgPool,
}

const PASSWORD: &str = "limits-test-password";

impl PgTenant {
    /// Creates the tenant row and a login role (granted `agentry_app`, mapped in
    /// `agentry.tenant_roles`).
    pub async fn create(admin: &PgPool, limits: LimitsConfig, kind: RoleKind) -> Self {
        let handle = tenant(limits);
        sqlx::query("insert into agentry.tenants (id, name) values ($1, $2)")
            .bind(handle.id.0)
            .bind(&handle.name)
            .execute(admin)
            .await
            .unwrap();
        let role = format!("agentry_limits_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "create role {role} login nosuperuser nobypassrls password '{PASSWORD}'; grant agentry_app to {role}"
        )))
        .execute(admin)
        .await
        .unwrap();
        let (tenant_id, shared) = match kind {
            RoleKind::Tenant => (Some(handle.id.0), false),
            RoleKind::Shared => (None, true),
        };
        sqlx::query(
            "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, $2, $3)",
        )
        .bind(&role)
        .bind(tenant_id)
        .bind(shared)
        .execute(admin)
        .await
        .unwrap();
        Self {
            handle,
            role,
            admin: admin.clone(),
        }
    }

    /// A new pool connected as the tenant's role (one per simulated replica).
    pub async fn db(&self, max_connections: u32) -> Db {
        let options = self
            .admin
            .connect_options()
            .as_ref()
            .clone()
            .username(&self.role)
            .password(PASSWORD);
        Db::connect_with(options, max_connections).await.unwrap()
    }

    /// Runs `body`, then drops the role whatever happened (roles outlive the test database).
    pub async fn guard<F: Future<Output = ()>>(&self, body: F) {
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        self.drop_role().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    async fn drop_role(&self) {
        let _ = sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
        )
        .bind(&self.role)
        .execute(&self.admin)
        .await;
        let _ = sqlx::query("delete from agentry.tenant_roles where role_name = $1")
            .bind(&self.role)
            .execute(&self.admin)
            .await;
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop role if exists {}",
            self.role
        )))
        .execute(&self.admin)
        .await
        {
            eprintln!("dropping role {}: {e}", self.role);
        }
    }

    /// `(limit, committed, leased)` of the tenant's only period.
    pub async fn ledger(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "select limit_micros, committed_micros, leased_micros from agentry.budget_periods
              where tenant_id = $1",
        )
        .bind(self.handle.id.0)
        .fetch_one(&self.admin)
        .await
        .unwrap()
    }

    /// `(holder, amount)` of the tenant's lease rows.
    pub async fn leases(&self) -> Vec<(String, i64)> {
        sqlx::query_as(
            "select holder, amount_micros from agentry.budget_leases where tenant_id = $1 order by holder",
        )
        .bind(self.handle.id.0)
        .fetch_all(&self.admin)
        .await
        .unwrap()
    }

    /// Payloads of the tenant's events of `type_`, oldest first.
    pub async fn events(&self, type_: &str) -> Vec<serde_json::Value> {
        sqlx::query_scalar(
            "select data from agentry.events where tenant_id = $1 and type = $2 order by id",
        )
        .bind(self.handle.id.0)
        .bind(type_)
        .fetch_all(&self.admin)
        .await
        .unwrap()
    }

    /// The superuser pool of the test database.
    pub fn admin(&self) -> &PgPool {
        &self.admin
    }
}

/// Limits with a monthly budget.
pub fn budget(micros: i64, action: agentry_crds::tenant::BudgetAction) -> LimitsConfig {
    LimitsConfig {
        monthly_budget_micros: Some(micros),
        budget_action: action,
        ..LimitsConfig::default()
    }
}

// Budget fixtures.

/// Tuning for tests: no backoff after a refusal, so that each call asks the ledger again.
pub fn config() -> BudgetConfig {
    BudgetConfig {
        exhausted_backoff: Duration::ZERO,
        ..BudgetConfig::default()
    }
}

pub async fn replicas(t: &PgTenant, n: usize, config: &BudgetConfig) -> Vec<Arc<Budgets>> {
    let mut out = Vec::new();
    for i in 0..n {
        let db = t.db(10).await;
        out.push(Arc::new(Budgets::with_config(
            db,
            format!("replica-{i}"),
            config.clone(),
        )));
    }
    out
}

/// Fifty reservations of `cost` released together by a barrier, spread over the replicas.
pub async fn fifty_at_once(
    t: &PgTenant,
    replicas: &[Arc<Budgets>],
    cost: i64,
) -> (Vec<(usize, Reservation)>, Vec<ApiError>) {
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let budgets = replicas[i % replicas.len()].clone();
        let tenant = t.handle.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            budgets.reserve(&tenant, cost).await
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(r) => admitted.push((i % replicas.len(), r)),
            Err(e) => refused.push(e),
        }
    }
    (admitted, refused)
}

pub async fn settle_all(
    replicas: &[Arc<Budgets>],
    admitted: &mut Vec<(usize, Reservation)>,
    actual: i64,
) {
    for (replica, reservation) in admitted.drain(..) {
        replicas[replica].settle(reservation, actual).await.unwrap();
    }
    for b in replicas {
        b.flush().await;
    }
}

pub async fn percents(t: &PgTenant) -> Vec<i64> {
    t.events("budget.threshold")
        .await
        .iter()
        .map(|e| e["percent"].as_i64().unwrap())
        .collect()
}

// Limiter fixtures.

pub fn limiter(shards: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (Limiter::with_clock(shards, clock.clone()), clock)
}

pub fn refused(result: Result<(), LimitExceeded>) -> LimitExceeded {
    match result {
        Ok(()) => panic!("expected a refusal"),
        Err(e) => e,
    }
}
