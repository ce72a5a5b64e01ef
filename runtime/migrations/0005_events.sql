-- Events: indexes for the audit API's filters (GET /api/v1/audit?subject=...&actor=...), which
-- list a tenant's events newest first. `type` is covered by events_tenant_type (0002).
-- The table stays append-only for application roles (0002 grants them SELECT and INSERT only);
-- publication progress lives in agentry.event_outbox.

create index events_tenant_subject on agentry.events (tenant_id, subject, id) where subject is not null;
create index events_tenant_actor on agentry.events (tenant_id, actor, id) where actor is not null;
