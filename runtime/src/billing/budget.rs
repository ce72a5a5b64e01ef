//! Monthly budgets that hold under concurrency across replicas.
//!
//! Each replica (a *holder*) leases a slice of a tenant's remaining monthly budget with one
//! atomic statement and spends it locally: a reservation that fits the local slice takes a
//! mutex, never the database. Settled spend is written back, and unused lease given back, by a
//! periodic flush. The database never grants more than `limit - committed - leased`, so under
//! `Block` the replicas together never admit more than the budget. See docs/limits.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_crds::tenant::BudgetAction;
use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::ledger::{self, Flush, LeaseRequest};
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::tenancy::{TenantHandle, TenantId};

/// The wall clock that decides the budget period (a parameter so that tests can cross a
/// month boundary).
pub type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Tuning of the lease protocol.
#[derive(Clone)]
pub struct BudgetConfig {
    /// Smallest lease, in thousandths of the monthly limit (50: 5 %).
    pub slice_permille: i64,
    /// How often spend is written back and unused lease given back.
    pub flush_interval: Duration,
    /// A lease whose holder has not heartbeaten for this long is reclaimed.
    pub lease_ttl: Duration,
    /// How often this replica looks for leases of dead replicas.
    pub reclaim_interval: Duration,
    /// After the ledger refused a lease, how long this replica answers from memory.
    pub exhausted_backoff: Duration,
    /// The clock deciding the period.
    pub clock: WallClock,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            slice_permille: 50,
            flush_interval: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(60),
            reclaim_interval: Duration::from_secs(30),
            exhausted_backoff: Duration::from_secs(2),
            clock: Arc::new(Utc::now),
        }
    }
}

impl std::fmt::Debug for BudgetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetConfig")
            .field("slice_permille", &self.slice_permille)
            .field("flush_interval", &self.flush_interval)
            .field("lease_ttl", &self.lease_ttl)
            .field("reclaim_interval", &self.reclaim_interval)
            .field("exhausted_backoff", &self.exhausted_backoff)
            .finish_non_exhaustive()
    }
}

/// The first day (UTC) of the month `now` falls in: the budget period.
pub fn period_of(now: DateTime<Utc>) -> NaiveDate {
    let day = now.date_naive();
    day.with_day(1).unwrap_or(day)
}

/// The budget ledger of one replica.
#[derive(Debug)]
pub struct Budgets {
    db: Db,
    holder: String,
    config: BudgetConfig,
    cells: DashMap<(TenantId, NaiveDate), Arc<Cell>>,
}

/// One tenant and period on this replica.
#[derive(Debug)]
struct Cell {
    tenant: TenantId,
    period: NaiveDate,
    state: Mutex<Slice>,
    /// Serialises this replica's ledger statements for the cell; the fast path never takes it.
    gate: tokio::sync::Mutex<()>,
}

/// The local slice. Invariant: `lease == free + reserved + spent_backed`.
#[derive(Debug)]
struct Slice {
    /// What the ledger holds for this holder.
    lease: i64,
    /// Leased, neither reserved nor spent.
    free: i64,
    /// Reservations in flight, backed by the lease.
    reserved: i64,
    /// Settled spend backed by the lease, not yet flushed.
    spent_backed: i64,
    /// Settled spend beyond the lease, not yet flushed.
    spent_over: i64,
    /// Bumped when the lease was reclaimed: older reservations are charged already.
    epoch: u64,
    /// The limit and action of the latest bundle seen.
    limit: i64,
    action: BudgetAction,
    /// The ledger's settled spend and announced threshold, as last seen.
    committed_seen: i64,
    notified_seen: i32,
    /// Until then, refuse (Block) or admit unbacked (Notify) without asking the ledger.
    exhausted_until: Option<Instant>,
    heartbeat_at: Option<Instant>,
}

impl Slice {
    fn new(limit: i64, action: BudgetAction) -> Self {
        Self {
            lease: 0,
            free: 0,
            reserved: 0,
            spent_backed: 0,
            spent_over: 0,
            epoch: 0,
            limit,
            action,
            committed_seen: 0,
            notified_seen: 0,
            exhausted_until: None,
            heartbeat_at: None,
        }
    }

    /// Reserves `estimate` from the free slice if it fits.
    fn take(&mut self, estimate: i64) -> Option<i64> {
        (self.free >= estimate).then(|| {
            self.free -= estimate;
            self.reserved += estimate;
            estimate
        })
    }

    /// Reserves what the free slice has, for an admission beyond the budget (Notify).
    fn take_some(&mut self, estimate: i64) -> i64 {
        let backed = self.free.clamp(0, estimate);
        self.free -= backed;
        self.reserved += backed;
        backed
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.exhausted_until.is_some_and(|until| now < until)
    }

    /// The lease was reclaimed (and charged) by another replica: forget it.
    fn orphan(&mut self) {
        self.epoch += 1;
        self.lease = 0;
        self.free = 0;
        self.reserved = 0;
        self.spent_backed = 0;
    }

    fn idle(&self) -> bool {
        self.lease == 0 && self.reserved == 0 && self.spent_backed == 0 && self.spent_over == 0
    }
}

/// Money set aside for one request; settle it with what the request cost. Dropping it
/// unsettled charges the whole estimate.
#[derive(Debug)]
#[must_use = "settle the reservation; dropping it charges the whole estimate"]
pub struct Reservation {
    cell: Option<Arc<Cell>>,
    backed: i64,
    unbacked: i64,
    epoch: u64,
}

impl Reservation {
    fn unmetered() -> Self {
        Self {
            cell: None,
            backed: 0,
            unbacked: 0,
            epoch: 0,
        }
    }

    /// The amount reserved (the estimate).
    pub fn amount(&self) -> i64 {
        self.backed + self.unbacked
    }

    /// Whether the tenant has a monthly budget at all.
    pub fn is_metered(&self) -> bool {
        self.cell.is_some()
    }

    /// Whether part of the amount was admitted beyond the budget (Notify).
    pub fn is_over_budget(&self) -> bool {
        self.unbacked > 0
    }

    /// Settles locally; true when the spend may have crossed a threshold.
    fn settle_local(&mut self, actual: i64) -> Option<(Arc<Cell>, bool)> {
        let cell = self.cell.take()?;
        let crossed = {
            let mut s = cell.state.lock();
            let actual = actual.max(0);
            if self.epoch == s.epoch {
                s.reserved -= self.backed;
                let covered = actual.min(self.backed);
                s.spent_backed += covered;
                s.free += self.backed - covered;
                let over = actual - covered;
                // Usage above the estimate comes out of the free slice first.
                let from_free = over.min(s.free).max(0);
                s.free -= from_free;
                s.spent_backed += from_free;
                s.spent_over += over - from_free;
            } else {
                s.spent_over += (actual - self.backed).max(0);
            }
            let seen = s.committed_seen + s.spent_backed + s.spent_over;
            ledger::reached(s.limit, seen) > s.notified_seen
        };
        Some((cell, crossed))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let amount = self.amount();
        // The request may have run: charging its estimate keeps the ledger on the safe side.
        let _ = self.settle_local(amount);
    }
}

impl Budgets {
    /// Budgets for replica `holder`, with the default tuning.
    pub fn new(db: Db, holder: String) -> Self {
        Self::with_config(db, holder, BudgetConfig::default())
    }

    /// Budgets with explicit tuning. The holder name gets a per-process suffix: a restarted
    /// replica with the same host name must not adopt the lease of its dead predecessor.
    pub fn with_config(db: Db, holder: String, config: BudgetConfig) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self {
            db,
            holder: format!("{holder}#{}", &suffix[..8]),
            config,
            cells: DashMap::new(),
        }
    }

    /// This replica's holder name in `agentry.budget_leases`.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Sets aside `estimate_micros` of the tenant's monthly budget for one request. Without a
    /// budget this always succeeds without touching the database; within the local slice it
    /// takes a mutex only. When the budget cannot cover the estimate, `Block` answers 402 and
    /// `Notify` admits the request anyway (its spend is still recorded).
    pub async fn reserve(
        &self,
        tenant: &TenantHandle,
        estimate_micros: i64,
    ) -> Result<Reservation, ApiError> {
        let bundle = tenant.bundle();
        let limits = &bundle.tenant.limits;
        let Some(limit) = limits.monthly_budget_micros else {
            return Ok(Reservation::unmetered());
        };
        let limit = limit.max(0);
        let action = limits.budget_action;
        let estimate = estimate_micros.max(0);
        let period = period_of((self.config.clock)());
        let cell = self
            .cells
            .entry((tenant.id, period))
            .or_insert_with(|| {
                Arc::new(Cell {
                    tenant: tenant.id,
                    period,
                    state: Mutex::new(Slice::new(limit, action)),
                    gate: tokio::sync::Mutex::new(()),
                })
            })
            .clone();
        if let Some(r) = self.answer_locally(&cell, limit, action, estimate) {
            return r;
        }
        let _gate = cell.gate.lock().await;
        // Another request may have leased (or been refused) while this one waited.
        if let Some(r) = self.answer_locally(&cell, limit, action, estimate) {
            return r;
        }
        let (need, lease_before) = {
            let s = cell.state.lock();
            (estimate - s.free, s.lease)
        };
        let slice = limit.saturating_mul(self.config.slice_permille.max(0)) / 1000;
        let req = LeaseRequest {
            tenant: tenant.id,
            period,
            holder: &self.holder,
            limit,
            wanted: need.max(slice).max(1),
            need,
            block: action == BudgetAction::Block,
            estimate,
        };
        // Boxed, as is `sync` in `settle`: a database call inline would make every caller's
        // future ~15 KB bigger for a path taken once a slice.
        let granted = Box::pin(ledger::lease(&self.db, &req)).await;
        let mut s = cell.state.lock();
        match granted {
            Ok(g) => {
                if let Some(amount) = g.lease_amount
                    && amount != lease_before + g.granted
                {
                    tracing::warn!(tenant = %tenant.id, %period, holder = %self.holder, "budget lease was reclaimed by another replica; its reservations count as spent");
                    s.orphan();
                    s.lease = amount - g.granted;
                }
                s.lease += g.granted;
                s.free += g.granted;
                s.committed_seen = g.committed;
                s.notified_seen = g.notified;
                if let Some(backed) = s.take(estimate) {
                    return Ok(self.reservation(&cell, &s, backed, 0));
                }
                s.exhausted_until = Some(Instant::now() + self.config.exhausted_backoff);
                self.short(&cell, &mut s, tenant.id, period, estimate)
            }
            Err(e) => match action {
                BudgetAction::Block => {
                    tracing::error!(tenant = %tenant.id, error = %e, "budget ledger unavailable; refusing (Block)");
                    Err(ApiError::unavailable(
                        "the budget ledger is unavailable; retry shortly",
                    ))
                }
                BudgetAction::Notify => {
                    tracing::warn!(tenant = %tenant.id, error = %e, "budget ledger unavailable; admitting (Notify)");
                    let backed = s.take_some(estimate);
                    Ok(self.reservation(&cell, &s, backed, estimate - backed))
                }
            },
        }
    }

    /// Settles a reservation with what the request actually cost: the unused part returns to
    /// the local slice, the spend is written back by the next flush (at once when it crosses
    /// a notification threshold).
    pub async fn settle(
        &self,
        mut reservation: Reservation,
        actual_micros: i64,
    ) -> Result<(), ApiError> {
        if let Some((cell, true)) = reservation.settle_local(actual_micros)
            && let Err(e) = Box::pin(self.sync(&cell)).await
        {
            // The spend stays in memory and the next flush retries.
            tracing::warn!(tenant = %cell.tenant, error = %e, "budget flush failed");
        }
        Ok(())
    }

    /// Writes settled spend back, gives back unused lease and heartbeats leases still held.
    /// Runs periodically and on shutdown.
    pub async fn flush(&self) {
        let cells: Vec<Arc<Cell>> = self.cells.iter().map(|c| c.value().clone()).collect();
        for cell in &cells {
            if let Err(e) = self.sync(cell).await {
                tracing::warn!(tenant = %cell.tenant, period = %cell.period, error = %e, "budget flush failed");
            }
        }
        let current = period_of((self.config.clock)());
        self.cells
            .retain(|(_, period), cell| *period >= current || !cell.state.lock().idle());
    }

    /// Reclaims the leases of replicas whose heartbeat stopped, for the tenants this replica
    /// serves. Returns the amount reclaimed.
    pub async fn reclaim_expired(&self) -> Result<i64, DbError> {
        let mut tenants: Vec<TenantId> = self.cells.iter().map(|c| c.key().0).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let ttl = self.config.lease_ttl.as_secs_f64();
        let mut total = 0;
        for tenant in tenants {
            total += ledger::reclaim(&self.db, tenant, &self.holder, ttl).await?;
        }
        Ok(total)
    }

    /// Flushes every `flush_interval` and reclaims dead replicas' leases every
    /// `reclaim_interval`, until shutdown (the final flush is the caller's).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reclaimed_at = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.flush().await;
            if reclaimed_at.elapsed() >= self.config.reclaim_interval {
                reclaimed_at = Instant::now();
                if let Err(e) = self.reclaim_expired().await {
                    tracing::warn!(error = %e, "reclaiming budget leases failed");
                }
            }
        }
    }

    /// Answers from the local slice when it can: a reservation that fits, or a refusal (or
    /// an unbacked admission) while backing off after the ledger ran dry.
    fn answer_locally(
        &self,
        cell: &Arc<Cell>,
        limit: i64,
        action: BudgetAction,
        estimate: i64,
    ) -> Option<Result<Reservation, ApiError>> {
        let mut s = cell.state.lock();
        s.limit = limit;
        s.action = action;
        if let Some(backed) = s.take(estimate) {
            return Some(Ok(self.reservation(cell, &s, backed, 0)));
        }
        s.backing_off(Instant::now())
            .then(|| self.short(cell, &mut s, cell.tenant, cell.period, estimate))
    }

    /// The budget cannot cover `estimate`.
    fn short(
        &self,
        cell: &Arc<Cell>,
        s: &mut Slice,
        tenant: TenantId,
        period: NaiveDate,
        estimate: i64,
    ) -> Result<Reservation, ApiError> {
        match s.action {
            BudgetAction::Block => Err(ApiError::budget_exhausted(format!(
                "the monthly budget of {} USD for {} is spent (or reserved by requests in flight); \
                 requests are refused until the next period or a higher budget",
                usd(s.limit),
                period.format("%Y-%m"),
            ))),
            BudgetAction::Notify => {
                tracing::debug!(tenant = %tenant, %period, "admitting beyond the monthly budget (Notify)");
                let backed = s.take_some(estimate);
                Ok(self.reservation(cell, s, backed, estimate - backed))
            }
        }
    }

    fn reservation(&self, cell: &Arc<Cell>, s: &Slice, backed: i64, unbacked: i64) -> Reservation {
        Reservation {
            cell: Some(cell.clone()),
            backed,
            unbacked,
            epoch: s.epoch,
        }
    }

    /// Flushes one cell. The amounts leave the local slice before the transaction (so that
    /// concurrent reservations cannot spend what is being given back) and return if it fails.
    async fn sync(&self, cell: &Arc<Cell>) -> Result<(), DbError> {
        let _gate = cell.gate.lock().await;
        let now = Instant::now();
        let heartbeat_every = self.config.lease_ttl / 4;
        let (work, limit) = {
            let mut s = cell.state.lock();
            let heartbeat_due = s.lease > 0
                && s.heartbeat_at
                    .is_none_or(|at| now.duration_since(at) >= heartbeat_every);
            let release = s.free + s.spent_backed;
            if release == 0 && s.spent_over == 0 && !heartbeat_due {
                return Ok(());
            }
            let work = Flush {
                spend_backed: s.spent_backed,
                spend_over: s.spent_over,
                release,
                lease_after: s.lease - release,
                had_lease: s.lease > 0,
            };
            s.lease -= release;
            s.free = 0;
            s.spent_backed = 0;
            s.spent_over = 0;
            (work, s.limit)
        };
        let result = ledger::flush(
            &self.db,
            cell.tenant,
            cell.period,
            &self.holder,
            limit,
            &work,
        )
        .await;
        let mut s = cell.state.lock();
        match result {
            Ok(done) => {
                s.committed_seen = done.committed;
                s.notified_seen = done.notified;
                s.heartbeat_at = Some(now);
                if done.reclaimed {
                    tracing::warn!(tenant = %cell.tenant, period = %cell.period, holder = %self.holder, "budget lease was reclaimed by another replica; its reservations count as spent");
                    s.orphan();
                }
                Ok(())
            }
            Err(e) => {
                s.lease += work.release;
                s.free += work.release - work.spend_backed;
                s.spent_backed += work.spend_backed;
                s.spent_over += work.spend_over;
                Err(e)
            }
        }
    }

    /// This replica's view of a tenant's current period, for tests and debugging:
    /// `(lease, free, reserved, unflushed spend)`.
    pub fn local_slice(&self, tenant: TenantId) -> Option<(i64, i64, i64, i64)> {
        let period = period_of((self.config.clock)());
        self.cells.get(&(tenant, period)).map(|cell| {
            let s = cell.state.lock();
            (s.lease, s.free, s.reserved, s.spent_backed + s.spent_over)
        })
    }
}

/// Micro-dollars as dollars with at least two decimals.
fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let frac = format!("{:06}", m % 1_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        format!("{frac:0<2}")
    } else {
        frac.to_owned()
    };
    format!("{sign}{}.{frac}", m / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn the_period_is_the_first_day_of_the_utc_month() {
        let t = Utc.with_ymd_and_hms(2025, 7, 31, 23, 59, 59).unwrap();
        assert_eq!(period_of(t), NaiveDate::from_ymd_opt(2025, 7, 1).unwrap());
        let t = Utc.with_ymd_and_hms(2025, 8, 1, 0, 0, 0).unwrap();
        assert_eq!(period_of(t), NaiveDate::from_ymd_opt(2025, 8, 1).unwrap());
    }

    #[test]
    fn dollars_are_printed_exactly() {
        assert_eq!(usd(0), "0.00");
        assert_eq!(usd(1_000_000), "1.00");
        assert_eq!(usd(1_500_000), "1.50");
        assert_eq!(usd(1_234_567), "1.234567");
        assert_eq!(usd(10), "0.00001");
    }

    #[test]
    fn settling_less_than_reserved_returns_the_rest_to_the_slice() {
        let cell = Arc::new(Cell {
            tenant: TenantId(uuid::Uuid::nil()),
            period: NaiveDate::from_ymd_opt(2025, 7, 1).unwrap(),
            state: Mutex::new(Slice::new(1000, BudgetAction::Block)),
            gate: tokio::sync::Mutex::new(()),
        });
        {
            let mut s = cell.state.lock();
            s.lease = 100;
            s.free = 100;
        }
        let backed = cell.state.lock().take(60).unwrap();
        let mut r = Reservation {
            cell: Some(cell.clone()),
            backed,
            unbacked: 0,
            epoch: 0,
        };
        r.settle_local(25);
        drop(r);
        let s = cell.state.lock();
        assert_eq!(
            (s.free, s.reserved, s.spent_backed, s.spent_over),
            (75, 0, 25, 0)
        );
        assert_eq!(s.lease, s.free + s.reserved + s.spent_backed);
    }

    #[test]
    fn usage_above_the_estimate_comes_from_the_slice_then_overdraws() {
        let cell = Arc::new(Cell {
            tenant: TenantId(uuid::Uuid::nil()),
            period: NaiveDate::from_ymd_opt(2025, 7, 1).unwrap(),
            state: Mutex::new(Slice::new(1000, BudgetAction::Block)),
            gate: tokio::sync::Mutex::new(()),
        });
        {
            let mut s = cell.state.lock();
            s.lease = 50;
            s.free = 50;
        }
        let backed = cell.state.lock().take(40).unwrap();
        let r = Reservation {
            cell: Some(cell.clone()),
            backed,
            unbacked: 0,
            epoch: 0,
        };
        // Dropped unsettled: the whole estimate is charged.
        drop(r);
        let backed = cell.state.lock().take(10).unwrap();
        let mut r = Reservation {
            cell: Some(cell.clone()),
            backed,
            unbacked: 0,
            epoch: 0,
        };
        r.settle_local(30);
        let s = cell.state.lock();
        assert_eq!((s.free, s.spent_backed, s.spent_over), (0, 50, 20));
        assert_eq!(s.lease, s.free + s.reserved + s.spent_backed);
    }
}
