-- Budgets: when a Block budget first refused a request in a period. `budget.exhausted` is
-- emitted by the transaction that sets it, so at most once per period across replicas; it is
-- cleared when the tenant's limit changes. See docs/limits.md.
alter table agentry.budget_periods add column exhausted_at timestamptz;
