//! The statements of the budget ledger (`agentry.budget_periods`, `agentry.budget_leases`).
//!
//! Every transaction here locks the tenant's period row before it touches a lease row, so that
//! leasing, flushing and reclaiming never deadlock one another, and each runs in an RLS-scoped
//! transaction of its tenant. Events are emitted in the transaction that makes them true.

use chrono::NaiveDate;
use serde_json::json;
use sqlx::PgConnection;

use crate::db::{Db, DbError};
use crate::events::{NewEvent, emit};
use crate::tenancy::TenantId;

/// Percentages of the monthly limit announced by `budget.threshold`.
pub const THRESHOLDS: [i32; 3] = [50, 80, 100];

/// The highest threshold `committed` has reached against `limit` (0 when none).
pub fn reached(limit: i64, committed: i64) -> i32 {
    if committed <= 0 {
        return 0;
    }
    THRESHOLDS
        .iter()
        .rev()
        .copied()
        .find(|t| i128::from(committed) * 100 >= i128::from(*t) * i128::from(limit))
        .unwrap_or(0)
}

/// A request for more budget from one replica.
#[derive(Debug)]
pub struct LeaseRequest<'a> {
    pub tenant: TenantId,
    pub period: NaiveDate,
    pub holder: &'a str,
    /// The monthly limit in the tenant's bundle now.
    pub limit: i64,
    /// What the replica asks for.
    pub wanted: i64,
    /// What it must get to admit the request at hand.
    pub need: i64,
    /// The request is refused when `need` is not granted (Block).
    pub block: bool,
    /// The request's estimate, for the `budget.exhausted` event.
    pub estimate: i64,
}

/// The outcome of a lease.
#[derive(Debug)]
pub struct Granted {
    /// Added to the replica's lease: never more than what remained unleased.
    pub granted: i64,
    /// The holder's lease row after the grant (None when nothing was granted).
    pub lease_amount: Option<i64>,
    /// The period's settled spend.
    pub committed: i64,
    /// The highest threshold announced so far.
    pub notified: i32,
}

/// Creates the period row from the bundle's limit, or updates the limit when the bundle
/// changed it. Either way the row is locked for the rest of the transaction.
async fn ensure_period(
    conn: &mut PgConnection,
    tenant: TenantId,
    period: NaiveDate,
    limit: i64,
) -> Result<(), sqlx::Error> {
    // A new limit re-arms the thresholds that the spend no longer reaches under it, and
    // the exhaustion notice.
    sqlx::query(
        "insert into agentry.budget_periods as b (tenant_id, period, limit_micros)
         values ($1, $2, $3)
         on conflict (tenant_id, period) do update
            set limit_micros = excluded.limit_micros,
                notified_percent = least(b.notified_percent, case
                  when b.committed_micros <= 0 then 0
                  when b.committed_micros::numeric * 100 >= excluded.limit_micros::numeric * 100 then 100
                  when b.committed_micros::numeric * 100 >= excluded.limit_micros::numeric * 80 then 80
                  when b.committed_micros::numeric * 100 >= excluded.limit_micros::numeric * 50 then 50
                  else 0 end),
                exhausted_at = null,
                updated_at = now()
          where b.limit_micros <> excluded.limit_micros",
    )
    .bind(tenant.0)
    .bind(period)
    .bind(limit.max(0))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Leases up to `wanted` more for `holder` with one atomic update that never grants more
/// than `limit - committed - leased`.
pub async fn lease(db: &Db, req: &LeaseRequest<'_>) -> Result<Granted, DbError> {
    let mut tx = db.begin(req.tenant).await?;
    ensure_period(&mut tx, req.tenant, req.period, req.limit).await?;
    let (granted, limit, committed, leased, notified): (i64, i64, i64, i64, i32) = sqlx::query_as(
        "with cur as (
               select limit_micros - committed_micros - leased_micros as remaining
                 from agentry.budget_periods
                where tenant_id = $1 and period = $2
                  for update
             )
             update agentry.budget_periods p
                set leased_micros = p.leased_micros + least($3, greatest(cur.remaining, 0)),
                    updated_at = now()
               from cur
              where p.tenant_id = $1 and p.period = $2
             returning least($3, greatest(cur.remaining, 0)), p.limit_micros,
                       p.committed_micros, p.leased_micros, p.notified_percent",
    )
    .bind(req.tenant.0)
    .bind(req.period)
    .bind(req.wanted.max(0))
    .fetch_one(&mut *tx)
    .await?;
    let lease_amount = if granted > 0 {
        let amount: i64 = sqlx::query_scalar(
            "insert into agentry.budget_leases as l (tenant_id, period, holder, amount_micros)
             values ($1, $2, $3, $4)
             on conflict (tenant_id, period, holder) do update
                set amount_micros = l.amount_micros + excluded.amount_micros,
                    heartbeat_at = now()
             returning amount_micros",
        )
        .bind(req.tenant.0)
        .bind(req.period)
        .bind(req.holder)
        .bind(granted)
        .fetch_one(&mut *tx)
        .await?;
        Some(amount)
    } else {
        None
    };
    if req.block && granted < req.need {
        let first = sqlx::query(
            "update agentry.budget_periods set exhausted_at = now()
              where tenant_id = $1 and period = $2 and exhausted_at is null",
        )
        .bind(req.tenant.0)
        .bind(req.period)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if first {
            let event = NewEvent::new(
                "budget.exhausted",
                json!({
                    "period": req.period,
                    "limitMicros": limit,
                    "spentMicros": committed,
                    "leasedMicros": leased,
                    "estimateMicros": req.estimate,
                }),
            )
            .subject(req.period.to_string())
            .actor("system");
            emit(&mut tx, req.tenant, event).await?;
        }
    }
    tx.commit().await?;
    Ok(Granted {
        granted,
        lease_amount,
        committed,
        notified,
    })
}

/// What one replica writes back for one tenant and period.
#[derive(Debug, Clone, Copy)]
pub struct Flush {
    /// Settled spend covered by the lease.
    pub spend_backed: i64,
    /// Settled spend beyond the lease (Notify, or usage above the estimate).
    pub spend_over: i64,
    /// Lease given back: free money plus the backed spend that moves to `committed`.
    pub release: i64,
    /// The holder's lease after the flush (reservations in flight).
    pub lease_after: i64,
    /// The holder held a lease before the flush.
    pub had_lease: bool,
}

/// The ledger after a flush.
#[derive(Debug)]
pub struct Flushed {
    /// The holder's lease row was gone: another replica reclaimed it (and charged it).
    pub reclaimed: bool,
    /// The period's settled spend.
    pub committed: i64,
    /// The highest threshold announced so far.
    pub notified: i32,
}

/// Moves settled spend to `committed`, gives back unused lease, heartbeats the holder's lease
/// and announces thresholds, in one transaction.
pub async fn flush(
    db: &Db,
    tenant: TenantId,
    period: NaiveDate,
    holder: &str,
    limit: i64,
    f: &Flush,
) -> Result<Flushed, DbError> {
    let mut tx = db.begin(tenant).await?;
    ensure_period(&mut tx, tenant, period, limit).await?;
    let found = if !f.had_lease {
        false
    } else if f.lease_after > 0 {
        sqlx::query(
            "update agentry.budget_leases set amount_micros = $4, heartbeat_at = now()
              where tenant_id = $1 and period = $2 and holder = $3",
        )
        .bind(tenant.0)
        .bind(period)
        .bind(holder)
        .bind(f.lease_after)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1
    } else {
        sqlx::query(
            "delete from agentry.budget_leases where tenant_id = $1 and period = $2 and holder = $3",
        )
        .bind(tenant.0)
        .bind(period)
        .bind(holder)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1
    };
    let reclaimed = f.had_lease && !found;
    // A reclaimed lease was charged in full by the reclaimer: only spend beyond it is new.
    let (spend, release) = if reclaimed {
        (f.spend_over, 0)
    } else {
        (f.spend_backed + f.spend_over, f.release)
    };
    let (limit, committed, notified): (i64, i64, i32) = sqlx::query_as(
        "update agentry.budget_periods
            set committed_micros = committed_micros + $3,
                leased_micros = greatest(leased_micros - $4, 0),
                updated_at = now()
          where tenant_id = $1 and period = $2
         returning limit_micros, committed_micros, notified_percent",
    )
    .bind(tenant.0)
    .bind(period)
    .bind(spend.max(0))
    .bind(release.max(0))
    .fetch_one(&mut *tx)
    .await?;
    let notified = announce(&mut tx, tenant, period, limit, committed, notified).await?;
    tx.commit().await?;
    Ok(Flushed {
        reclaimed,
        committed,
        notified,
    })
}

/// Emits one `budget.threshold` event per threshold newly reached. The conditional update
/// makes a threshold announced once per period, whichever replica gets there first.
async fn announce(
    conn: &mut PgConnection,
    tenant: TenantId,
    period: NaiveDate,
    limit: i64,
    committed: i64,
    notified: i32,
) -> Result<i32, sqlx::Error> {
    let now = reached(limit, committed);
    if now <= notified {
        return Ok(notified);
    }
    let moved = sqlx::query(
        "update agentry.budget_periods set notified_percent = $3
          where tenant_id = $1 and period = $2 and notified_percent < $3",
    )
    .bind(tenant.0)
    .bind(period)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !moved {
        return Ok(now);
    }
    for percent in THRESHOLDS
        .into_iter()
        .filter(|t| *t > notified && *t <= now)
    {
        let event = NewEvent::new(
            "budget.threshold",
            json!({
                "percent": percent,
                "limitMicros": limit,
                "spentMicros": committed,
                "period": period,
            }),
        )
        .subject(period.to_string())
        .actor("system");
        emit(conn, tenant, event).await?;
    }
    Ok(now)
}

/// Charges and removes the leases of holders whose heartbeat is older than `ttl_secs`
/// (replicas that died). Their lease counts as spent: the replica may have spent it before it
/// died, and under Block the ledger must never undercount. Returns the amount reclaimed.
pub async fn reclaim(
    db: &Db,
    tenant: TenantId,
    holder: &str,
    ttl_secs: f64,
) -> Result<i64, DbError> {
    let mut tx = db.begin(tenant).await?;
    let periods: Vec<NaiveDate> = sqlx::query_scalar(
        "select p.period from agentry.budget_periods p
          where p.tenant_id = $1
            and exists (select 1 from agentry.budget_leases l
                         where l.tenant_id = p.tenant_id and l.period = p.period
                           and l.holder <> $2
                           and l.heartbeat_at < now() - make_interval(secs => $3))
          order by p.period
            for update of p",
    )
    .bind(tenant.0)
    .bind(holder)
    .bind(ttl_secs)
    .fetch_all(&mut *tx)
    .await?;
    let mut total = 0;
    for period in periods {
        let (amount, limit, committed, notified): (i64, i64, i64, i32) = sqlx::query_as(
            "with dead as (
               delete from agentry.budget_leases
                where tenant_id = $1 and period = $2 and holder <> $3
                  and heartbeat_at < now() - make_interval(secs => $4)
               returning amount_micros
             ), total as (
               select coalesce(sum(amount_micros), 0)::bigint as amount from dead
             )
             update agentry.budget_periods p
                set leased_micros = greatest(p.leased_micros - total.amount, 0),
                    committed_micros = p.committed_micros + total.amount,
                    updated_at = now()
               from total
              where p.tenant_id = $1 and p.period = $2
             returning total.amount, p.limit_micros, p.committed_micros, p.notified_percent",
        )
        .bind(tenant.0)
        .bind(period)
        .bind(holder)
        .bind(ttl_secs)
        .fetch_one(&mut *tx)
        .await?;
        announce(&mut tx, tenant, period, limit, committed, notified).await?;
        if amount > 0 {
            tracing::warn!(tenant = %tenant, %period, amount_micros = amount, "reclaimed the budget leases of dead replicas");
        }
        total += amount;
    }
    tx.commit().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_at_their_percentages() {
        assert_eq!(reached(1000, 0), 0);
        assert_eq!(reached(1000, 499), 0);
        assert_eq!(reached(1000, 500), 50);
        assert_eq!(reached(1000, 799), 50);
        assert_eq!(reached(1000, 800), 80);
        assert_eq!(reached(1000, 1000), 100);
        assert_eq!(reached(1000, 5000), 100);
        assert_eq!(reached(0, 0), 0);
        assert_eq!(reached(0, 1), 100);
        assert_eq!(reached(i64::MAX, i64::MAX), 100);
    }
}
