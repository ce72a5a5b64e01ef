//! The batched usage writer against real PostgreSQL, connected as a tenant role: records are
//! written within the flush interval with their events, everything queued is written on
//! close, a full queue makes callers wait (and counts them) instead of dropping, no record is
//! lost, and the time each record was only in memory is observed.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

mod limits_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentry_crds::bundle::LimitsConfig;
use agentry_runtime::billing::{UsageConfig, UsageRow, UsageWriter};
use agentry_runtime::llm::{Completion, FinishReason, Usage};
use agentry_runtime::metrics::Metrics;
use limits_support::{PgTenant, RoleKind, key_caller, user_caller};
use sqlx::{Connection as _, PgPool};
use uuid::Uuid;

fn completion(tokens_in: u32, tokens_out: u32, cost_micros: i64) -> Completion {
    Completion {
        content: "hello".to_owned(),
        tool_calls: Vec::new(),
        usage: Usage {
            input_tokens: tokens_in,
            output_tokens: tokens_out,
        },
        usage_estimated: false,
        finish_reason: FinishReason::Stop,
        model: "fast".to_owned(),
        provider: "mock".to_owned(),
        cost_micros,
        attempts: 1,
    }
}

async fn count(admin: &PgPool, sql: &str, tenant: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(tenant)
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn usage_rows(t: &PgTenant) -> i64 {
    count(
        t.admin(),
        "select count(*) from agentry.usage_records where tenant_id = $1",
        t.handle.id.0,
    )
    .await
}

/// A writer whose flush window no test waits for (an hour): only a full batch, a flush or the
/// close write its records.
async fn writer_without_window(t: &PgTenant, max_batch: usize, queue: usize) -> UsageWriter {
    UsageWriter::spawn(
        t.db(2).await,
        UsageConfig {
            flush_interval: Duration::from_secs(3600),
            max_batch,
            queue,
            ..UsageConfig::default()
        },
    )
}

/// Hands `n` small records of a new API key over to `writer`, `pause` apart (none when zero).
async fn hand_over(writer: &UsageWriter, t: &PgTenant, n: u32, pause: Duration) {
    let caller = key_caller(&t.handle, Uuid::new_v4());
    for i in 0..n {
        writer
            .record(UsageRow::of(&caller, &completion(i, 1, 1)))
            .await
            .unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Waits until the tenant has `rows` usage rows; fails with `what` after `within`.
async fn wait_for_rows(t: &PgTenant, rows: i64, within: Duration, what: &str) {
    let started = Instant::now();
    while usage_rows(t).await < rows {
        assert!(started.elapsed() < within, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn records_are_written_within_the_flush_interval_with_their_events(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let writer = UsageWriter::spawn(
            t.db(2).await,
            UsageConfig {
                flush_interval: Duration::from_millis(50),
                ..UsageConfig::default()
            },
        );
        let key = Uuid::new_v4();
        let caller = key_caller(&t.handle, key);
        let record = UsageRow::of(&caller, &completion(12, 5, 340));
        let (id, at) = (record.id, record.at);
        writer.record(record).await.unwrap();
        for i in 0..9 {
            writer
                .record(UsageRow::of(&caller, &completion(i, 1, 10)))
                .await
                .unwrap();
        }
        wait_for_rows(&t, 10, Duration::from_secs(5), "records were not written").await;
        let (key_id, model, tokens_in, tokens_out, cost, created_at): (
            Option<Uuid>,
            String,
            i32,
            i32,
            i64,
            chrono::DateTime<chrono::Utc>,
        ) = sqlx::query_as(
            "select key_id, model, tokens_in, tokens_out, cost_micros, created_at
               from agentry.usage_records where tenant_id = $1 and id = $2",
        )
        .bind(t.handle.id.0)
        .bind(id)
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(
            (key_id, model.as_str(), tokens_in, tokens_out, cost),
            (Some(key), "fast", 12, 5, 340)
        );
        assert_eq!(
            created_at.timestamp_micros(),
            at.timestamp_micros(),
            "the row carries when the call finished, not when the batch was written"
        );
        let events = t.events("usage.recorded").await;
        assert_eq!(events.len(), 10);
        let first = events
            .iter()
            .find(|e| e["id"] == id.to_string())
            .expect("the record's event");
        assert_eq!(first["inputTokens"], 12);
        assert_eq!(first["costMicros"], 340);
        assert_eq!(first["source"], "chat");
        assert_eq!(
            count(
                &admin,
                "select count(*) from agentry.event_outbox where tenant_id = $1",
                t.handle.id.0
            )
            .await,
            10,
            "every event is queued for the relay"
        );
        writer.close().await;
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn close_writes_everything_queued_and_later_records_directly(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        // No batch fills the queue: only `close` can write these.
        let writer = writer_without_window(&t, 100_000, 10_000).await;
        let mut senders = tokio::task::JoinSet::new();
        for s in 0..8 {
            let (writer, caller) = (writer.clone(), user_caller(&t.handle, &format!("u{s}")));
            senders.spawn(async move {
                for i in 0..100 {
                    writer
                        .record(UsageRow::of(&caller, &completion(i, 1, 1)))
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(done) = senders.join_next().await {
            done.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(usage_rows(&t).await, 0, "nothing is written per request");
        writer.close().await;
        assert_eq!(usage_rows(&t).await, 800, "close wrote every queued record");
        assert_eq!(t.events("usage.recorded").await.len(), 800);

        let caller = key_caller(&t.handle, Uuid::new_v4());
        writer
            .record(UsageRow::of(&caller, &completion(1, 1, 1)))
            .await
            .unwrap();
        assert_eq!(
            usage_rows(&t).await,
            801,
            "after close a record is written before `record` returns"
        );
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_full_queue_makes_callers_wait_and_loses_nothing(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let (queue, max_batch, writes_in_flight) = (4, 2, 2);
        let metrics = Metrics::new();
        let writer = UsageWriter::spawn_on(
            t.db(2).await,
            UsageConfig {
                flush_interval: Duration::from_millis(5),
                max_batch,
                queue,
                writes_in_flight,
            },
            &tokio::runtime::Handle::current(),
            Some(&metrics),
        );
        // Holding the table lock stalls every write, as a slow database would.
        let mut blocker = sqlx::PgConnection::connect_with(&admin.connect_options())
            .await
            .unwrap();
        sqlx::raw_sql("begin; lock table agentry.usage_records in exclusive mode")
            .execute(&mut blocker)
            .await
            .unwrap();
        let total = 40;
        let returned = Arc::new(AtomicUsize::new(0));
        let mut senders = tokio::task::JoinSet::new();
        for i in 0..total {
            let (writer, returned) = (writer.clone(), returned.clone());
            let caller = key_caller(&t.handle, Uuid::new_v4());
            senders.spawn(async move {
                writer
                    .record(UsageRow::of(&caller, &completion(i, 1, 1)))
                    .await
                    .unwrap();
                returned.fetch_add(1, Ordering::SeqCst);
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waiting = total as usize - returned.load(Ordering::SeqCst);
        // At most the queue, the batches being written and the one waiting for a write were
        // taken; the rest wait.
        assert!(
            waiting >= total as usize - queue - (writes_in_flight + 1) * max_batch,
            "only {waiting} of {total} callers wait for room"
        );
        // Each caller that found the queue full is counted (one may have found room since).
        let counted = metrics.usage_queue_full.get();
        assert!(
            counted >= waiting as u64 && counted <= u64::from(total),
            "{counted} counted for {waiting} callers waiting"
        );
        let stalled_writes: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(
            stalled_writes, writes_in_flight as i64,
            "batches are written {writes_in_flight} at once"
        );
        sqlx::raw_sql("rollback")
            .execute(&mut blocker)
            .await
            .unwrap();
        while let Some(done) = senders.join_next().await {
            done.unwrap();
        }
        writer.flush().await;
        assert_eq!(usage_rows(&t).await, i64::from(total), "no record lost");
        writer.close().await;
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn records_of_several_tenants_land_with_their_own_tenant(admin: PgPool) {
    let a = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Shared).await;
    let b = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Shared).await;
    a.guard(b.guard(async {
        // One shared (dev mode) role serving both tenants, as `agentry-runtime dev` does.
        let writer = UsageWriter::spawn(a.db(2).await, UsageConfig::default());
        for i in 0..6 {
            let t = if i % 2 == 0 { &a } else { &b };
            let caller = key_caller(&t.handle, Uuid::new_v4());
            writer
                .record(UsageRow::of(&caller, &completion(1, 1, 1)))
                .await
                .unwrap();
        }
        writer.close().await;
        assert_eq!(usage_rows(&a).await, 3);
        assert_eq!(usage_rows(&b).await, 3);
        assert_eq!(a.events("usage.recorded").await.len(), 3);
        assert_eq!(b.events("usage.recorded").await.len(), 3);
    }))
    .await;
}

/// `(upper bound, cumulative count)` of every bucket of `agentry_usage_write_delay_seconds`.
fn delay_buckets(metrics: &Metrics) -> Vec<(f64, u64)> {
    metrics
        .encode()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("agentry_usage_write_delay_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            Some((le, count.trim().parse().unwrap()))
        })
        .collect()
}

/// Records observed in buckets whose upper bound is below `seconds`.
fn observed_below(buckets: &[(f64, u64)], seconds: f64) -> u64 {
    buckets
        .iter()
        .filter(|&&(le, _)| le < seconds)
        .map(|&(_, n)| n)
        .max()
        .unwrap_or_default()
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_write_delay_counts_the_time_a_record_was_only_in_memory(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let metrics = Metrics::new();
        let writer = UsageWriter::spawn_on(
            t.db(2).await,
            UsageConfig {
                flush_interval: Duration::from_millis(5),
                ..UsageConfig::default()
            },
            &tokio::runtime::Handle::current(),
            Some(&metrics),
        );
        // A stalled database: the records stay in memory until the lock goes.
        let mut blocker = sqlx::PgConnection::connect_with(&admin.connect_options())
            .await
            .unwrap();
        sqlx::raw_sql("begin; lock table agentry.usage_records in exclusive mode")
            .execute(&mut blocker)
            .await
            .unwrap();
        hand_over(&writer, &t, 3, Duration::ZERO).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            delay_buckets(&metrics).iter().all(|&(_, n)| n == 0),
            "nothing is observed before it is written"
        );
        sqlx::raw_sql("rollback")
            .execute(&mut blocker)
            .await
            .unwrap();
        writer.flush().await;
        assert_eq!(usage_rows(&t).await, 3);
        assert_eq!(
            metrics.usage_queue_full.get(),
            0,
            "a stalled write alone makes nobody wait while the queue has room"
        );
        let buckets = delay_buckets(&metrics);
        assert_eq!(
            buckets.last(),
            Some(&(f64::INFINITY, 3)),
            "one observation per record: {buckets:?}"
        );
        assert_eq!(
            observed_below(&buckets, 0.4),
            0,
            "the 400 ms the database held the records back count: {buckets:?}"
        );
        writer.close().await;
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_full_batch_is_written_without_waiting_for_its_window(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let writer = writer_without_window(&t, 10, 100).await;
        hand_over(&writer, &t, 15, Duration::ZERO).await;
        wait_for_rows(
            &t,
            10,
            Duration::from_secs(10),
            "a full batch waited for its window",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            usage_rows(&t).await,
            10,
            "the next batch waits for its window"
        );
        writer.close().await;
        assert_eq!(usage_rows(&t).await, 15);
    })
    .await;
}

/// The writer sleeps out a batch's window instead of waking for every record: on the runtime's
/// background thread, which shares the request path's core, each wake-up was a switch away from
/// the request path and back, once per request.
#[cfg(target_os = "linux")]
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn records_wake_the_writer_once_a_batch_not_once_a_record(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let background = agentry_runtime::priority::BackgroundThread::spawn(0).unwrap();
        let thread = background
            .handle()
            .spawn(async { std::fs::read_link("/proc/thread-self").unwrap() })
            .await
            .unwrap();
        let status = std::path::Path::new("/proc").join(thread).join("status");
        let wakes = || -> u64 {
            let status = std::fs::read_to_string(&status).unwrap();
            let line = status
                .lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))
                .unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let writer = UsageWriter::spawn_on(
            t.db(2).await,
            UsageConfig {
                flush_interval: Duration::from_secs(2),
                ..UsageConfig::default()
            },
            background.handle(),
            None,
        );
        // The writer waits on its empty queue.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = wakes();
        hand_over(&writer, &t, 100, Duration::from_millis(1)).await;
        let woken = wakes() - before;
        assert!(
            woken <= 10,
            "the writer's thread was woken {woken} times for 100 records in one window"
        );
        assert_eq!(usage_rows(&t).await, 0, "the window is not over");
        writer.close().await;
        assert_eq!(usage_rows(&t).await, 100);
        drop(background);
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_batch_is_written_a_flush_interval_after_its_record_was_handed_over(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let metrics = Metrics::new();
        // An interval no test waits for, but the record was handed over 3 s before the writer
        // saw it (as behind a full queue): its window is over already.
        let writer = UsageWriter::spawn_on(
            t.db(2).await,
            UsageConfig {
                flush_interval: Duration::from_secs(2),
                ..UsageConfig::default()
            },
            &tokio::runtime::Handle::current(),
            Some(&metrics),
        );
        let mut record = UsageRow::of(&key_caller(&t.handle, Uuid::new_v4()), &completion(1, 1, 1));
        record.at -= chrono::TimeDelta::seconds(3);
        writer.record(record).await.unwrap();
        wait_for_rows(
            &t,
            1,
            Duration::from_secs(1),
            "the batch waited for a window that had already passed",
        )
        .await;
        // The delay is observed just after the commit that made the row visible.
        let started = Instant::now();
        let mut buckets = delay_buckets(&metrics);
        while buckets.last().is_none_or(|&(_, n)| n == 0)
            && started.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            buckets = delay_buckets(&metrics);
        }
        assert_eq!(
            (
                observed_below(&buckets, 2.9),
                buckets.last().map(|&(_, n)| n)
            ),
            (0, Some(1)),
            "the delay runs from the hand-over: {buckets:?}"
        );
        writer.close().await;
    })
    .await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn close_gives_up_on_a_write_to_an_unreachable_database(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let writer = UsageWriter::spawn(
            t.db(2).await,
            UsageConfig {
                flush_interval: Duration::from_millis(5),
                ..UsageConfig::default()
            },
        );
        // The role can no longer log in and its sessions are gone: every write fails, as with
        // the database unreachable, and is retried.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "alter role {} nologin",
            t.role
        )))
        .execute(&admin)
        .await
        .unwrap();
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
            .bind(&t.role)
            .execute(&admin)
            .await
            .unwrap();
        writer
            .record(UsageRow::of(
                &key_caller(&t.handle, Uuid::new_v4()),
                &completion(1, 1, 1),
            ))
            .await
            .unwrap();
        // The write starts and fails before the close.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), writer.close()).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("alter role {} login", t.role)))
            .execute(&admin)
            .await
            .unwrap();
        assert!(
            closed.is_ok(),
            "close waited on a write that retries for ever instead of its last tries"
        );
        assert_eq!(usage_rows(&t).await, 0, "the record was reported lost");
    })
    .await;
}

/// Handing a record over is on every metered request's path, whose futures are moved by value:
/// the write a closed writer does directly is boxed, so that `record`'s future is not the
/// ~15 KB of an inline batch write.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn handing_a_record_over_is_a_small_future(admin: PgPool) {
    let t = PgTenant::create(&admin, LimitsConfig::default(), RoleKind::Tenant).await;
    t.guard(async {
        let writer = writer_without_window(&t, 10, 100).await;
        let caller = key_caller(&t.handle, Uuid::new_v4());
        let record = writer.record(UsageRow::of(&caller, &completion(1, 1, 1)));
        let size = std::mem::size_of_val(&record);
        assert!(
            size <= 2048,
            "the future of UsageWriter::record is {size} bytes"
        );
        record.await.unwrap();
        writer.close().await;
        assert_eq!(usage_rows(&t).await, 1);
    })
    .await;
}
