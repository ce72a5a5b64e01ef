-- Workflow runs and their steps (the orchestrator's checkpoints). A run row holds the spec it
-- started with (so a changed Workflow never changes a run in flight), its cursor (next node,
-- state, visit counts, a pending wait and decision) and the lease of the replica driving it;
-- a step row is appended per executed node. See docs/workflows.md.
create table agentry.workflow_runs (
  tenant_id      uuid not null references agentry.tenants (id) on delete cascade,
  id             uuid not null,
  workflow       text not null,
  revision       text not null,
  spec           jsonb not null,
  input          jsonb not null,
  flags          jsonb not null default '{}',
  status         text not null default 'pending'
                 check (status in ('pending', 'running', 'waiting', 'succeeded', 'failed',
                                   'denied', 'handed_off', 'cancelled', 'timed_out')),
  cursor         jsonb not null,
  result         jsonb,
  error          text,
  started_by     text not null,
  principal      jsonb not null,
  conversation_id uuid,
  lease_owner    uuid,
  lease_until    timestamptz,
  wake_at        timestamptz,
  claims         integer not null default 0,
  deadline       timestamptz not null,
  created_at     timestamptz not null default now(),
  updated_at     timestamptz not null default now(),
  finished_at    timestamptz,
  primary key (tenant_id, id)
);
create index workflow_runs_tenant_created on agentry.workflow_runs (tenant_id, created_at desc, id desc);
-- What the workers poll: only runs that may need a replica.
create index workflow_runs_runnable on agentry.workflow_runs (tenant_id, created_at)
  where status in ('pending', 'running', 'waiting');

create table agentry.workflow_steps (
  tenant_id    uuid not null,
  run_id       uuid not null,
  seq          integer not null,
  node         text not null,
  kind         text not null,
  visit        integer not null,
  parent       integer,
  status       text not null check (status in ('succeeded', 'failed', 'waiting', 'decided')),
  attempts     integer not null default 0,
  input        jsonb,
  output       jsonb,
  error        text,
  started_at   timestamptz not null,
  finished_at  timestamptz not null,
  primary key (tenant_id, run_id, seq),
  foreign key (tenant_id, run_id) references agentry.workflow_runs (tenant_id, id) on delete cascade
);

alter table agentry.workflow_runs enable row level security;
alter table agentry.workflow_runs force row level security;
create policy tenant_isolation on agentry.workflow_runs
  using (tenant_id = (select agentry.current_tenant()))
  with check (tenant_id = (select agentry.current_tenant()));

alter table agentry.workflow_steps enable row level security;
alter table agentry.workflow_steps force row level security;
create policy tenant_isolation on agentry.workflow_steps
  using (tenant_id = (select agentry.current_tenant()))
  with check (tenant_id = (select agentry.current_tenant()));

grant select, insert, update, delete on agentry.workflow_runs to agentry_app;
grant select, insert on agentry.workflow_steps to agentry_app;
