-- Core tenant tables. Every table: `tenant_id` first in every index, RLS enabled and forced,
-- one policy keyed on agentry.current_tenant().

create table agentry.api_keys (
  tenant_id     uuid not null references agentry.tenants (id) on delete cascade,
  id            uuid not null,
  key_id        text not null,
  secret_hash   bytea not null,
  name          text not null,
  scopes        text[] not null,
  created_at    timestamptz not null default now(),
  revoked_at    timestamptz,
  last_used_at  timestamptz,
  primary key (tenant_id, id),
  unique (key_id)
);
create index api_keys_tenant_created on agentry.api_keys (tenant_id, created_at desc);

create table agentry.conversations (
  tenant_id     uuid not null references agentry.tenants (id) on delete cascade,
  id            uuid not null,
  agent         text,
  workflow      text,
  user_id       text,
  title         text,
  status        text not null default 'open',
  escalated     boolean not null default false,
  metadata      jsonb not null default '{}',
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now(),
  primary key (tenant_id, id)
);
create index conversations_tenant_user on agentry.conversations (tenant_id, user_id, updated_at desc);
create index conversations_tenant_updated on agentry.conversations (tenant_id, updated_at desc);

create table agentry.messages (
  tenant_id        uuid not null,
  id               uuid not null,
  conversation_id  uuid not null,
  role             text not null check (role in ('system', 'user', 'assistant', 'tool')),
  content          text not null default '',
  agent            text,
  tool_calls       jsonb,
  tool_call_id     text,
  model            text,
  tokens_in        integer not null default 0,
  tokens_out       integer not null default 0,
  cost_micros      bigint not null default 0,
  latency_ms       integer,
  created_at       timestamptz not null default now(),
  primary key (tenant_id, id),
  foreign key (tenant_id, conversation_id) references agentry.conversations (tenant_id, id) on delete cascade
);
create index messages_tenant_conversation on agentry.messages (tenant_id, conversation_id, created_at);

-- The append-only audit log; `id` is a UUIDv7 so that it orders by creation.
create table agentry.events (
  tenant_id     uuid not null references agentry.tenants (id) on delete cascade,
  id            uuid not null,
  type          text not null,
  version       integer not null,
  subject       text,
  actor         text,
  data          jsonb not null,
  traceparent   text,
  created_at    timestamptz not null default now(),
  primary key (tenant_id, id)
);
create index events_tenant_type on agentry.events (tenant_id, type, id);

-- Events not yet published to JetStream. A row is written with its event, in the same
-- transaction, and deleted by the relay once JetStream acknowledged the message.
create table agentry.event_outbox (
  tenant_id     uuid not null,
  event_id      uuid not null,
  attempts      integer not null default 0,
  primary key (tenant_id, event_id),
  foreign key (tenant_id, event_id) references agentry.events (tenant_id, id) on delete cascade
);

create table agentry.usage_records (
  tenant_id     uuid not null references agentry.tenants (id) on delete cascade,
  id            uuid not null,
  request_id    text,
  key_id        uuid,
  user_id       text,
  source        text not null,
  model         text,
  tokens_in     integer not null default 0,
  tokens_out    integer not null default 0,
  cost_micros   bigint not null default 0,
  created_at    timestamptz not null default now(),
  primary key (tenant_id, id)
);
create index usage_records_tenant_created on agentry.usage_records (tenant_id, created_at);

-- One row per tenant and month: the limit, what was spent (settled) and what replicas hold
-- as leases. Invariant: committed + leased <= limit when the action is Block.
create table agentry.budget_periods (
  tenant_id         uuid not null references agentry.tenants (id) on delete cascade,
  period            date not null,
  limit_micros      bigint not null check (limit_micros >= 0),
  committed_micros  bigint not null default 0 check (committed_micros >= 0),
  leased_micros     bigint not null default 0 check (leased_micros >= 0),
  notified_percent  integer not null default 0,
  updated_at        timestamptz not null default now(),
  primary key (tenant_id, period)
);

-- Outstanding leases by holder (one runtime replica), so that a dead replica's lease can be
-- reclaimed after its heartbeat stops.
create table agentry.budget_leases (
  tenant_id      uuid not null,
  period         date not null,
  holder         text not null,
  amount_micros  bigint not null check (amount_micros >= 0),
  heartbeat_at   timestamptz not null default now(),
  primary key (tenant_id, period, holder),
  foreign key (tenant_id, period) references agentry.budget_periods (tenant_id, period) on delete cascade
);

do $$
declare
  t text;
begin
  foreach t in array array['api_keys', 'conversations', 'messages', 'events', 'event_outbox',
                           'usage_records', 'budget_periods', 'budget_leases']
  loop
    execute format('alter table agentry.%I enable row level security', t);
    execute format('alter table agentry.%I force row level security', t);
    execute format('create policy tenant_isolation on agentry.%I
                      using (tenant_id = (select agentry.current_tenant()))
                      with check (tenant_id = (select agentry.current_tenant()))', t);
  end loop;
end $$;

grant select, insert, update, delete on agentry.api_keys, agentry.conversations, agentry.messages,
  agentry.event_outbox, agentry.usage_records, agentry.budget_periods, agentry.budget_leases
  to agentry_app;
-- The audit log is append-only for application roles.
grant select, insert on agentry.events to agentry_app;

-- API key lookup by key id, for authentication before the tenant is known. A tenant role sees
-- only its own tenant's keys (another tenant's key fails to authenticate); a shared role (dev
-- mode) sees all. Returns the hash, never the key. The owner of this function must bypass RLS
-- (superuser or BYPASSRLS): see docs/data.md.
create function agentry.lookup_api_key(p_key_id text)
  returns table (tenant_id uuid, id uuid, secret_hash bytea, scopes text[], revoked boolean)
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select k.tenant_id, k.id, k.secret_hash, k.scopes, k.revoked_at is not null
  from agentry.api_keys k
  where k.key_id = p_key_id
    and (agentry.session_is_shared() or k.tenant_id = agentry.current_tenant())
$$;

revoke all on function agentry.lookup_api_key(text) from public;
grant execute on function agentry.lookup_api_key(text) to agentry_app;
