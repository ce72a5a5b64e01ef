-- `current_tenant()` and `session_is_shared()` in PL/pgSQL, same bodies, same privileges.
-- Row-level security calls `current_tenant()` once per statement. A SQL function that cannot be
-- inlined (these are SECURITY DEFINER with a search_path) is parsed and planned again for every
-- statement that calls it; PL/pgSQL keeps the plan for the session. Measured with pgbench on a
-- primary-key lookup under the policy: 37-41 µs added per statement as SQL, 10-16 as PL/pgSQL
-- (docs/benchmarks.md). `create or replace` keeps the owner and the grants.

create or replace function agentry.current_tenant() returns uuid
  language plpgsql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  return (
    select case
      when r.shared then nullif(current_setting('agentry.tenant_id', true), '')::uuid
      else r.tenant_id
    end
    from agentry.tenant_roles r
    where r.role_name = session_user);
end
$$;

create or replace function agentry.session_is_shared() returns boolean
  language plpgsql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  return coalesce((select shared from agentry.tenant_roles where role_name = session_user), false);
end
$$;
