//! Monthly budgets against real PostgreSQL, with several `Budgets` instances standing in for
//! replicas (each with its own pool, connected as the tenant's role).

mod limits_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use agentry_crds::bundle::LimitsConfig;
use agentry_crds::tenant::BudgetAction;
use agentry_runtime::billing::budget::period_of;
use agentry_runtime::billing::{BudgetConfig, Budgets};
use agentry_runtime::db::Db;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use limits_support::{
    PgTenant, RoleKind, budget, config, fifty_at_once, percents, replicas, settle_all,
};
use sqlx::PgPool;

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn fifty_simultaneous_requests_against_a_budget_for_one_admit_exactly_one(admin: PgPool) {
    let cost = 25_000;
    let t = PgTenant::create(&admin, budget(cost, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        // The default backoff: refusals after the first are answered from memory.
        let replicas = replicas(&t, 3, &BudgetConfig::default()).await;
        let (mut admitted, refused) = fifty_at_once(&t, &replicas, cost).await;
        assert_eq!(admitted.len(), 1, "exactly one request is admitted");
        assert_eq!(refused.len(), 49);
        for e in &refused {
            assert_eq!(e.status, StatusCode::PAYMENT_REQUIRED, "{e}");
            assert_eq!(e.code, "budget_exhausted");
        }
        let response = refused[0].clone().into_response();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "budget_exhausted");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("0.025 USD")
        );

        assert_eq!(
            t.ledger().await,
            (cost, 0, cost),
            "the one admission holds the budget"
        );
        settle_all(&replicas, &mut admitted, cost).await;
        assert_eq!(t.ledger().await, (cost, cost, 0));
        assert!(t.leases().await.is_empty(), "flushed leases are given back");
        assert_eq!(
            t.events("budget.exhausted").await.len(),
            1,
            "announced once per period"
        );
        assert_eq!(percents(&t).await, vec![50, 80, 100]);
    })
    .await;
}

/// Mid-month the period row exists, so the replicas race on the grant itself (not on
/// creating the row). Each round raises the budget by one request's cost.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn each_raise_by_one_requests_cost_admits_exactly_one_more(admin: PgPool) {
    let cost = 25_000;
    let mut limit = 10 * cost;
    let t = PgTenant::create(&admin, budget(limit, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        sqlx::query(
            "insert into agentry.budget_periods (tenant_id, period, limit_micros, committed_micros, notified_percent)
             values ($1, $2, $3, $4, 80)",
        )
        .bind(t.handle.id.0)
        .bind(period_of(chrono::Utc::now()))
        .bind(limit)
        .bind(limit - cost)
        .execute(t.admin())
        .await
        .unwrap();
        let replicas = replicas(&t, 3, &config()).await;
        for round in 0..5 {
            if round > 0 {
                limit += cost;
                let mut bundle = (*t.handle.bundle()).clone();
                bundle.tenant.limits.monthly_budget_micros = Some(limit);
                t.handle.swap_bundle(bundle);
            }
            let (mut admitted, refused) = fifty_at_once(&t, &replicas, cost).await;
            assert_eq!(admitted.len(), 1, "round {round}: exactly one admitted");
            assert!(refused.iter().all(|e| e.status == StatusCode::PAYMENT_REQUIRED));
            assert_eq!(t.ledger().await, (limit, limit - cost, cost), "round {round}");
            settle_all(&replicas, &mut admitted, cost).await;
            assert_eq!(t.ledger().await, (limit, limit, 0), "round {round}");
        }
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn settling_less_returns_money_and_replicas_never_commit_beyond_the_limit(admin: PgPool) {
    let limit = 100;
    let t = PgTenant::create(&admin, budget(limit, BudgetAction::Block), RoleKind::Shared).await;
    t.guard(async {
        let r = replicas(&t, 2, &config()).await;
        let (a, b) = (&r[0], &r[1]);
        let first = a.reserve(&t.handle, 100).await.unwrap();
        assert_eq!(
            b.reserve(&t.handle, 1).await.unwrap_err().status,
            StatusCode::PAYMENT_REQUIRED
        );
        a.settle(first, 40).await.unwrap();
        // The 60 not spent is back in A's slice, usable without the ledger...
        assert_eq!(a.local_slice(t.handle.id), Some((100, 60, 0, 40)));
        let again = a.reserve(&t.handle, 60).await.unwrap();
        a.settle(again, 10).await.unwrap();
        // ...and, once flushed, in the ledger for every replica.
        a.flush().await;
        assert_eq!(t.ledger().await, (limit, 50, 0));
        let on_b = b.reserve(&t.handle, 50).await.unwrap();
        assert_eq!(
            b.reserve(&t.handle, 1).await.unwrap_err().status,
            StatusCode::PAYMENT_REQUIRED
        );
        b.settle(on_b, 50).await.unwrap();
        b.flush().await;
        assert_eq!(t.ledger().await, (limit, 100, 0));
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn concurrent_spend_on_three_replicas_stays_within_the_limit(admin: PgPool) {
    let limit = 10_000;
    let estimate = 300;
    let t = PgTenant::create(&admin, budget(limit, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        let r = replicas(&t, 3, &config()).await;
        let spent = Arc::new(AtomicI64::new(0));
        let admitted = Arc::new(AtomicI64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        // Watches the ledger's invariant while the replicas spend.
        let watcher = {
            let admin = t.admin().clone();
            let tenant = t.handle.id.0;
            let done = done.clone();
            tokio::spawn(async move {
                let mut samples = 0;
                while !done.load(Ordering::Acquire) {
                    let row: Option<(i64, i64, i64)> = sqlx::query_as(
                        "select limit_micros, committed_micros, leased_micros
                           from agentry.budget_periods where tenant_id = $1",
                    )
                    .bind(tenant)
                    .fetch_optional(&admin)
                    .await
                    .unwrap();
                    if let Some((limit, committed, leased)) = row {
                        assert!(
                            committed + leased <= limit,
                            "{committed} + {leased} > {limit}"
                        );
                        samples += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                samples
            })
        };
        let mut tasks = Vec::new();
        for i in 0..30 {
            let budgets = r[i % 3].clone();
            let tenant = t.handle.clone();
            let (spent, admitted) = (spent.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                for j in 0..20 {
                    if let Ok(res) = budgets.reserve(&tenant, estimate).await {
                        let actual = ((i * 31 + j * 17) % 301) as i64;
                        admitted.fetch_add(1, Ordering::Relaxed);
                        spent.fetch_add(actual, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        budgets.settle(res, actual).await.unwrap();
                    }
                    if j % 4 == 3 {
                        budgets.flush().await;
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for b in &r {
            b.flush().await;
        }
        done.store(true, Ordering::Release);
        assert!(watcher.await.unwrap() > 0);
        let (_, committed, leased) = t.ledger().await;
        assert_eq!(leased, 0);
        assert_eq!(
            committed,
            spent.load(Ordering::Relaxed),
            "every settled micro is committed"
        );
        assert!(committed <= limit);
        // Unused estimates went back into circulation: more admissions than limit / estimate.
        assert!(admitted.load(Ordering::Relaxed) > limit / estimate);
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_dead_replicas_lease_is_reclaimed_and_charged(admin: PgPool) {
    let limit = 1_000;
    let t = PgTenant::create(&admin, budget(limit, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        let r = replicas(&t, 2, &config()).await;
        let (a, b) = (&r[0], &r[1]);
        let on_b = b.reserve(&t.handle, 100).await.unwrap();
        b.settle(on_b, 40).await.unwrap();
        let on_a = a.reserve(&t.handle, 200).await.unwrap();
        a.settle(on_a, 150).await.unwrap();
        let in_flight = a.reserve(&t.handle, 30).await.unwrap();
        a.flush().await;
        assert_eq!(t.ledger().await, (limit, 150, 130));
        let mut leases = t.leases().await;
        leases.sort_by_key(|l| l.1);
        assert_eq!(leases, vec![(a.holder().to_owned(), 30), (b.holder().to_owned(), 100)]);

        // B stops heartbeating (it died, or lost the database for longer than the TTL).
        sqlx::query("update agentry.budget_leases set heartbeat_at = now() - interval '10 minutes' where holder = $1")
            .bind(b.holder())
            .execute(t.admin())
            .await
            .unwrap();
        assert_eq!(a.reclaim_expired().await.unwrap(), 100);
        // B's lease counts as spent; A's live lease is kept.
        assert_eq!(t.ledger().await, (limit, 250, 30));
        assert_eq!(t.leases().await, vec![(a.holder().to_owned(), 30)]);
        assert_eq!(a.reclaim_expired().await.unwrap(), 0);

        // B was only cut off: its late flush must not count its spend twice nor give back a
        // lease it no longer holds.
        b.flush().await;
        assert_eq!(t.ledger().await, (limit, 250, 30));
        let again = b.reserve(&t.handle, 100).await.unwrap();
        assert_eq!(t.ledger().await, (limit, 250, 130));
        b.settle(again, 100).await.unwrap();
        a.settle(in_flight, 30).await.unwrap();
        a.flush().await;
        b.flush().await;
        assert_eq!(t.ledger().await, (limit, 380, 0));
        assert!(t.leases().await.is_empty());
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn notify_announces_each_threshold_once_and_keeps_serving(admin: PgPool) {
    let limit = 1_000;
    let t = PgTenant::create(
        &admin,
        budget(limit, BudgetAction::Notify),
        RoleKind::Tenant,
    )
    .await;
    t.guard(async {
        let r = replicas(&t, 2, &config()).await;
        let (a, b) = (&r[0], &r[1]);
        let x = a.reserve(&t.handle, 300).await.unwrap();
        a.settle(x, 300).await.unwrap();
        let y = b.reserve(&t.handle, 300).await.unwrap();
        b.settle(y, 300).await.unwrap();
        assert!(
            t.events("budget.threshold").await.is_empty(),
            "nothing flushed yet"
        );
        // Both flush at once; together they cross 50 %: one event, not two.
        tokio::join!(a.flush(), b.flush());
        assert_eq!(percents(&t).await, vec![50]);

        // A settle that crosses a threshold flushes at once.
        let z = a.reserve(&t.handle, 250).await.unwrap();
        a.settle(z, 250).await.unwrap();
        assert_eq!(percents(&t).await, vec![50, 80]);

        // 150 remain: Notify admits 200 anyway and records all of it.
        let over = b.reserve(&t.handle, 200).await.unwrap();
        assert!(over.is_over_budget());
        b.settle(over, 200).await.unwrap();
        assert_eq!(percents(&t).await, vec![50, 80, 100]);
        let more = a.reserve(&t.handle, 100).await.unwrap();
        a.settle(more, 100).await.unwrap();
        a.flush().await;
        b.flush().await;
        assert_eq!(percents(&t).await, vec![50, 80, 100]);
        let (_, committed, leased) = t.ledger().await;
        assert_eq!((committed, leased), (1_150, 0));
        assert!(t.events("budget.exhausted").await.is_empty());
        let last = t.events("budget.threshold").await.pop().unwrap();
        assert_eq!(last["limitMicros"], limit);
        assert!(last["spentMicros"].as_i64().unwrap() >= limit);
        assert!(last["period"].as_str().unwrap().ends_with("-01"));
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_hot_path_does_not_touch_the_database(admin: PgPool) {
    let t = PgTenant::create(&admin, budget(1_000, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        let db: Db = t.db(2).await;
        let budgets = Budgets::with_config(db.clone(), "replica".into(), config());
        // The first reservation leases 5 % of the limit (50)...
        let first = budgets.reserve(&t.handle, 10).await.unwrap();
        assert_eq!(budgets.local_slice(t.handle.id), Some((50, 40, 10, 0)));
        // ...and the next four are served from it with the database gone.
        db.pool().close().await;
        let mut held = vec![first];
        for _ in 0..4 {
            held.push(budgets.reserve(&t.handle, 10).await.unwrap());
        }
        for r in held {
            budgets.settle(r, 10).await.unwrap();
        }
        // Beyond the slice the ledger is needed; Block fails closed.
        let err = budgets.reserve(&t.handle, 10).await.unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);

        // A tenant without a budget never needs the database.
        let free = limits_support::tenant(LimitsConfig::default());
        let r = budgets.reserve(&free, 1_000_000).await.unwrap();
        assert!(!r.is_metered());
        budgets.settle(r, 5_000_000).await.unwrap();
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn each_utc_month_has_its_own_budget(admin: PgPool) {
    use chrono::TimeZone as _;
    let t = PgTenant::create(&admin, budget(100, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        let july = chrono::Utc
            .with_ymd_and_hms(2025, 7, 31, 23, 59, 0)
            .unwrap();
        let now = Arc::new(AtomicI64::new(july.timestamp()));
        let clock_now = now.clone();
        let config = BudgetConfig {
            clock: Arc::new(move || {
                chrono::Utc
                    .timestamp_opt(clock_now.load(Ordering::Relaxed), 0)
                    .unwrap()
            }),
            ..config()
        };
        let budgets = Budgets::with_config(t.db(2).await, "replica".into(), config);
        let in_july = budgets.reserve(&t.handle, 100).await.unwrap();
        assert!(budgets.reserve(&t.handle, 1).await.is_err());
        now.fetch_add(120, Ordering::Relaxed);
        let in_august = budgets.reserve(&t.handle, 100).await.unwrap();
        // A reservation settles into the period it was taken in.
        budgets.settle(in_july, 100).await.unwrap();
        budgets.settle(in_august, 30).await.unwrap();
        budgets.flush().await;
        let rows: Vec<(chrono::NaiveDate, i64, i64)> = sqlx::query_as(
            "select period, committed_micros, leased_micros from agentry.budget_periods
              where tenant_id = $1 order by period",
        )
        .bind(t.handle.id.0)
        .fetch_all(t.admin())
        .await
        .unwrap();
        let day = |m| chrono::NaiveDate::from_ymd_opt(2025, m, 1).unwrap();
        assert_eq!(rows, vec![(day(7), 100, 0), (day(8), 30, 0)]);
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_background_task_flushes_until_shutdown(admin: PgPool) {
    let t = PgTenant::create(&admin, budget(1_000, BudgetAction::Block), RoleKind::Tenant).await;
    t.guard(async {
        let config = BudgetConfig {
            flush_interval: Duration::from_millis(20),
            ..config()
        };
        let budgets = Arc::new(Budgets::with_config(
            t.db(2).await,
            "replica".into(),
            config,
        ));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(budgets.clone().run(shutdown.clone()));
        let r = budgets.reserve(&t.handle, 100).await.unwrap();
        budgets.settle(r, 70).await.unwrap();
        let mut flushed = false;
        for _ in 0..250 {
            if t.ledger().await == (1_000, 70, 0) {
                flushed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            flushed,
            "settled spend reaches the ledger without an explicit flush"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    })
    .await;
}

/// `reserve` and `settle` run on every metered request, whose futures are moved by value
/// (into a spawned task, through the middleware): the database calls they rarely make are
/// boxed, so that a future of theirs is not the ~15 KB of an inline query.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn reserving_and_settling_are_small_futures(admin: PgPool) {
    let cost = 25_000;
    let t = PgTenant::create(
        &admin,
        budget(100 * cost, BudgetAction::Block),
        RoleKind::Tenant,
    )
    .await;
    t.guard(async {
        let replicas = replicas(&t, 1, &config()).await;
        let reserve = replicas[0].reserve(&t.handle, cost);
        let size = std::mem::size_of_val(&reserve);
        assert!(
            size <= 2048,
            "the future of Budgets::reserve is {size} bytes"
        );
        let reservation = reserve.await.unwrap();
        let settle = replicas[0].settle(reservation, cost);
        let size = std::mem::size_of_val(&settle);
        assert!(
            size <= 2048,
            "the future of Budgets::settle is {size} bytes"
        );
        settle.await.unwrap();
        replicas[0].flush().await;
        assert_eq!(t.ledger().await, (100 * cost, cost, 0));
    })
    .await;
}
