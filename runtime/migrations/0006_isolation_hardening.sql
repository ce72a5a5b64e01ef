-- Isolation hardening on top of 0001/0002 (see docs/data.md, "Roles").

-- The role-to-tenant mapping has a tenant_id, so it is a tenant table like any other: RLS
-- enabled and forced. Application roles hold no privilege on it at all. The one policy lets
-- agentry.current_tenant() work when its owner is a table owner without BYPASSRLS (forced RLS
-- applies to owners): it then reads the session role's own mapping row and nothing else.
alter table agentry.tenant_roles enable row level security;
alter table agentry.tenant_roles force row level security;
create policy own_mapping on agentry.tenant_roles for select
  using (role_name = session_user);
revoke all on agentry.tenant_roles from agentry_app;

-- A tenant role may read its tenant's row, never change it. With UPDATE it could unsuspend or
-- re-plan itself, or rename itself to the name the operator will next provision, and so be
-- handed that tenant's id by the operator's upsert on the name. The operator (superuser or
-- BYPASSRLS) writes tenants.
revoke insert, update, delete, truncate on agentry.tenants from agentry_app;
