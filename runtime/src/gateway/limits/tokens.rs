//! Tokens per minute.
//!
//! The number of tokens a call uses is known only after it ran, so admission works on an
//! estimate: [`Limiter::check_tokens`] takes the estimate from each bucket (most specific
//! first) and [`Limiter::record_tokens`] matches the actual usage against the estimates held
//! for the caller's calls in flight. Usage beyond them is taken from the bucket if it conforms
//! and otherwise becomes debt, which the next admission pays before its own estimate: a caller
//! over its token rate is refused on its next call until the bucket has refilled.
//! Unused estimates are not refunded (GCRA cells cannot be given back); they are forfeited
//! when the caller has no call in flight.

use std::num::NonZeroU32;

use governor::clock::Clock;

use super::{Caller, Limit, LimitExceeded, Limiter, Subject, levels};
use crate::tenancy::TenantId;

/// Accounts idle this long are dropped even with a call in flight (a caller that never
/// recorded its usage) or unpaid debt.
const ACCOUNT_TTL_NANOS: u64 = 3_600 * 1_000_000_000;

/// Token bookkeeping of one caller (or the tenant) at one limit.
#[derive(Debug, Default)]
pub(crate) struct TokenAccount {
    /// Estimates taken from the bucket for calls in flight, not yet matched by usage.
    held: u64,
    /// Calls admitted and not yet recorded.
    inflight: u32,
    /// Usage the bucket could not absorb; charged before the next admission.
    debt: u64,
    /// Last use, in limiter clock nanoseconds.
    touched: u64,
}

impl TokenAccount {
    /// Whether the sweep keeps this account at clock reading `now`.
    pub(crate) fn keep(&self, now: u64) -> bool {
        let busy = self.inflight > 0 || self.debt > 0;
        busy && now.saturating_sub(self.touched) < ACCOUNT_TTL_NANOS
    }
}

impl<C> Limiter<C>
where
    C: Clock + Clone + Send + Sync,
{
    /// Admits an LLM call estimated at `estimate` tokens, or refuses it when the caller (its
    /// key, its user or its tenant) is over its token rate. Pair every admission with one
    /// [`Limiter::record_tokens`], also when the call fails (with the tokens it used, maybe 0).
    pub fn check_tokens(&self, caller: &Caller, estimate: u32) -> Result<(), LimitExceeded> {
        self.maybe_sweep();
        let now = self.elapsed_nanos();
        let tenant = caller.tenant.id;
        let bundle = caller.tenant.bundle();
        let levels = levels(caller, &bundle.tenant.limits, true);
        for (done, (limit, rate, subject)) in levels.iter().enumerate() {
            let bucket = self.bucket(tenant, *limit, *rate);
            let mut account = self
                .tokens
                .entry((tenant, *limit, subject.clone()))
                .or_default();
            account.touched = now;
            let need = account.debt.saturating_add(u64::from(estimate));
            // A call larger than a whole minute's share is admitted on a full bucket; the
            // rest stays as debt.
            let take = need.min(u64::from(bucket.burst.get()));
            let verdict = match NonZeroU32::new(u32::try_from(take).unwrap_or(u32::MAX)) {
                None => Ok(()),
                Some(cells) => match bucket.gcra.check_key_n(subject, cells) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(not_until)) => Err(self.refusal(*limit, *rate, &not_until)),
                    Err(_) => Err(LimitExceeded {
                        limit: limit.as_str(),
                        retry_after_secs: 60,
                        message: format!("{}; retry in 60 s", limit.describe(*rate)),
                    }),
                },
            };
            match verdict {
                Ok(()) => {
                    account.debt = need - take;
                    account.held = account.held.saturating_add(u64::from(estimate));
                    account.inflight = account.inflight.saturating_add(1);
                }
                Err(refused) => {
                    drop(account);
                    // The more specific levels admitted this call: it will not run, so it is
                    // not in flight there (their cells stay spent).
                    self.unwind(tenant, &levels[..done], estimate);
                    return Err(refused);
                }
            }
        }
        Ok(())
    }

    /// Records the tokens an admitted call actually used. Usage beyond the estimates held for
    /// the caller is charged even when it overdraws the bucket.
    pub fn record_tokens(&self, caller: &Caller, actual: u32) {
        let now = self.elapsed_nanos();
        let tenant = caller.tenant.id;
        let bundle = caller.tenant.bundle();
        for (limit, rate, subject) in levels(caller, &bundle.tenant.limits, true) {
            let bucket = self.bucket(tenant, limit, rate);
            let mut account = self
                .tokens
                .entry((tenant, limit, subject.clone()))
                .or_default();
            account.touched = now;
            account.inflight = account.inflight.saturating_sub(1);
            let used = u64::from(actual);
            if account.held >= used {
                account.held -= used;
            } else {
                let mut over = used - account.held;
                account.held = 0;
                let take = over.min(u64::from(bucket.burst.get()));
                if let Some(cells) = NonZeroU32::new(u32::try_from(take).unwrap_or(u32::MAX))
                    && matches!(bucket.gcra.check_key_n(&subject, cells), Ok(Ok(())))
                {
                    over -= take;
                }
                account.debt = account.debt.saturating_add(over);
            }
            if account.inflight == 0 {
                account.held = 0;
            }
        }
    }

    /// Tokens owed by `caller` at `limit` (tests, debugging).
    pub fn token_debt(&self, caller: &Caller, limit: Limit) -> u64 {
        let bundle = caller.tenant.bundle();
        levels(caller, &bundle.tenant.limits, true)
            .into_iter()
            .find(|(l, _, _)| *l == limit)
            .and_then(|(l, _, subject)| self.tokens.get(&(caller.tenant.id, l, subject)))
            .map_or(0, |a| a.debt)
    }

    fn unwind(&self, tenant: TenantId, admitted: &[(Limit, u32, Subject)], estimate: u32) {
        for (limit, _, subject) in admitted {
            if let Some(mut account) = self.tokens.get_mut(&(tenant, *limit, subject.clone())) {
                account.inflight = account.inflight.saturating_sub(1);
                account.held = account.held.saturating_sub(u64::from(estimate));
                if account.inflight == 0 {
                    account.held = 0;
                }
            }
        }
    }
}
