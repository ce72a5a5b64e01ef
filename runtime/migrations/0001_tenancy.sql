-- Tenancy and row-level security: the contract between the operator, the runtime and the data.
--
-- Isolation is keyed on the database role. Every tenant table has `tenant_id` and one policy,
-- `tenant_id = (select agentry.current_tenant())`. `current_tenant()` maps the *session* role
-- (which a session cannot change without superuser) to its tenant through agentry.tenant_roles.
-- Only roles marked `shared` (dev mode) read the tenant from a transaction-local setting.
-- See docs/data.md.

create schema if not exists agentry;

-- The group role every runtime role belongs to; it carries the table privileges.
-- Roles are cluster-wide and migrations of several databases may run at once.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'agentry_app') then
    create role agentry_app nologin;
  end if;
exception when duplicate_object or unique_violation then null;
end $$;

create table agentry.tenants (
  id            uuid primary key,
  name          text not null unique check (name ~ '^[a-z]([-a-z0-9]*[a-z0-9])?$' and length(name) <= 40),
  display_name  text,
  plan          text,
  suspended     boolean not null default false,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now()
);

-- Which login role serves which tenant. Not readable by application roles.
create table agentry.tenant_roles (
  role_name   name primary key,
  tenant_id   uuid references agentry.tenants (id) on delete cascade,
  shared      boolean not null default false,
  created_at  timestamptz not null default now(),
  check ((tenant_id is not null) <> shared)
);

-- The tenant of the current session: from the session role's mapping, or, for a shared
-- (dev mode) role only, from the transaction-local setting `agentry.tenant_id`.
-- SECURITY DEFINER so that application roles can use the mapping without reading it.
create function agentry.current_tenant() returns uuid
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select case
    when r.shared then nullif(current_setting('agentry.tenant_id', true), '')::uuid
    else r.tenant_id
  end
  from agentry.tenant_roles r
  where r.role_name = session_user
$$;

revoke all on function agentry.current_tenant() from public;

-- Whether the session role is a shared (dev mode) role.
create function agentry.session_is_shared() returns boolean
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce((select shared from agentry.tenant_roles where role_name = session_user), false)
$$;

revoke all on function agentry.session_is_shared() from public;

alter table agentry.tenants enable row level security;
alter table agentry.tenants force row level security;
create policy tenant_isolation on agentry.tenants
  using (id = (select agentry.current_tenant()))
  with check (id = (select agentry.current_tenant()));

grant usage on schema agentry to agentry_app;
grant execute on function agentry.current_tenant() to agentry_app;
grant execute on function agentry.session_is_shared() to agentry_app;
grant select, update on agentry.tenants to agentry_app;
