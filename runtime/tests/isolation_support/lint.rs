//! The catalog lint: what every tenant table, policy, index, view, SECURITY DEFINER function
//! and grant of schema `agentry` must look like. Each check returns its findings as text.

use sqlx::PgPool;

/// Every finding of the lint over `tables` (the tenant tables), allowing the named indexes
/// not to lead with `tenant_id`.
pub async fn problems(
    admin: &PgPool,
    tables: &[String],
    index_exceptions: &[(&str, &str)],
) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(rls_forced(admin, tables).await);
    problems.extend(one_subselect_policy(admin, tables).await);
    problems.extend(indexes_lead_with_tenant(admin, tables, index_exceptions).await);
    problems.extend(no_rls_bypassing_views(admin).await);
    problems.extend(definers_are_pinned(admin).await);
    problems.extend(policy_functions_keep_their_plans(admin).await);
    problems.extend(app_grants(admin).await);
    problems
}

/// The functions the policies call are PL/pgSQL: a SQL function that cannot be inlined (a
/// SECURITY DEFINER one) is planned again in every statement that calls it (migration 0009).
async fn policy_functions_keep_their_plans(admin: &PgPool) -> Vec<String> {
    let languages: Vec<(String, String)> = sqlx::query_as(
        "select p.proname::text, l.lanname::text
           from pg_proc p
           join pg_namespace n on n.oid = p.pronamespace
           join pg_language l on l.oid = p.prolang
          where n.nspname = 'agentry' and p.proname in ('current_tenant', 'session_is_shared')",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    let mut problems: Vec<String> = languages
        .iter()
        .filter(|(_, language)| language != "plpgsql")
        .map(|(function, language)| format!("{function}: language {language}, want plpgsql"))
        .collect();
    if languages.len() != 2 {
        problems.push(format!("policy functions found: {languages:?}"));
    }
    problems
}

/// RLS enabled and forced on every tenant table, and on `tenants` (keyed on `id`).
async fn rls_forced(admin: &PgPool, tables: &[String]) -> Vec<String> {
    let rls: Vec<(String, bool, bool)> = sqlx::query_as(
        "select c.relname::text, c.relrowsecurity, c.relforcerowsecurity
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = 'agentry' and c.relkind in ('r', 'p')",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    rls.into_iter()
        .filter(|(table, enabled, forced)| {
            (tables.contains(table) || table == "tenants") && !(*enabled && *forced)
        })
        .map(|(table, enabled, forced)| format!("{table}: RLS enabled {enabled}, forced {forced}"))
        .collect()
}

/// A row of pg_policies: table, name, command, USING, WITH CHECK.
type PolicyRow = (String, String, String, Option<String>, Option<String>);

/// Exactly one policy per tenant table, for all commands, comparing the key with
/// `(select agentry.current_tenant())`: the subselect is an InitPlan, run once per statement
/// rather than once per row. The mapping table is the one exception: a SELECT-only policy on
/// the session role's own row.
async fn one_subselect_policy(admin: &PgPool, tables: &[String]) -> Vec<String> {
    let policies: Vec<PolicyRow> = sqlx::query_as(
        "select tablename::text, policyname::text, cmd, qual, with_check
           from pg_policies where schemaname = 'agentry'",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    let mut problems = Vec::new();
    for table in tables.iter().map(String::as_str).chain(["tenants"]) {
        let mine: Vec<_> = policies.iter().filter(|p| p.0 == table).collect();
        let [(_, name, cmd, qual, check)] = mine.as_slice() else {
            problems.push(format!("{table}: {} policies, want exactly 1", mine.len()));
            continue;
        };
        let (qual, check) = (
            qual.as_deref().unwrap_or(""),
            check.as_deref().unwrap_or(""),
        );
        if table == "tenant_roles" {
            if cmd != "SELECT" || qual != "(role_name = SESSION_USER)" || !check.is_empty() {
                problems.push(format!(
                    "tenant_roles: policy {name} {cmd} {qual:?} {check:?}"
                ));
            }
            continue;
        }
        let key = if table == "tenants" {
            "id"
        } else {
            "tenant_id"
        };
        let want = format!("({key} = ( SELECT agentry.current_tenant() AS current_tenant))");
        if cmd != "ALL" || qual != want || check != want {
            problems.push(format!(
                "{table}: policy {name} {cmd} using {qual:?} check {check:?}, want {want:?}"
            ));
        }
    }
    problems
}

/// `tenant_id` leads every index of a tenant table, primary keys and unique constraints
/// included, except the named ones (which must still exist).
async fn indexes_lead_with_tenant(
    admin: &PgPool,
    tables: &[String],
    exceptions: &[(&str, &str)],
) -> Vec<String> {
    let indexes: Vec<(String, Option<String>)> = sqlx::query_as(
        "select i.indexrelid::regclass::text, a.attname::text
           from pg_index i
           join pg_class c on c.oid = i.indrelid
           join pg_namespace n on n.oid = c.relnamespace
           left join pg_attribute a on a.attrelid = c.oid and a.attnum = i.indkey[0]
          where n.nspname = 'agentry' and c.relname = any($1)",
    )
    .bind(tables)
    .fetch_all(admin)
    .await
    .unwrap();
    let mut problems = Vec::new();
    for (index, first) in &indexes {
        let excepted = exceptions.iter().any(|(name, _)| name == index);
        if first.as_deref() != Some("tenant_id") && !excepted {
            problems.push(format!("index {index} leads with {first:?}, not tenant_id"));
        }
    }
    for (name, _) in exceptions {
        if !indexes.iter().any(|(index, _)| index == name) {
            problems.push(format!(
                "index exception {name} names an index that is gone"
            ));
        }
    }
    problems
}

/// A view runs with its owner's rights unless `security_invoker`, so one over a tenant table
/// would bypass RLS; a materialized view has no RLS at all.
async fn no_rls_bypassing_views(admin: &PgPool) -> Vec<String> {
    let views: Vec<(String, String)> = sqlx::query_as(
        "select c.relname::text, c.relkind::text
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = 'agentry'
            and ((c.relkind = 'v'
                  and not coalesce(c.reloptions @> '{security_invoker=true}', false))
                 or (c.relkind = 'm'
                     and has_table_privilege('agentry_app', c.oid, 'SELECT')))",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    views
        .into_iter()
        .map(|(view, kind)| format!("{view} (relkind {kind}) would read tenant rows without RLS"))
        .collect()
}

/// SECURITY DEFINER functions: a fixed search_path starting with pg_catalog, ending with
/// pg_temp, without public or `$user`; and no EXECUTE for PUBLIC.
async fn definers_are_pinned(admin: &PgPool) -> Vec<String> {
    let definers: Vec<(String, Option<String>, bool)> = sqlx::query_as(
        "select p.oid::regprocedure::text, array_to_string(p.proconfig, E'\\n'),
                p.proacl is null or exists (select 1 from aclexplode(p.proacl) x
                                             where x.grantee = 0
                                               and x.privilege_type = 'EXECUTE')
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          where n.nspname = 'agentry' and p.prosecdef",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    let mut problems = Vec::new();
    if definers.len() < 3 {
        problems.push(format!(
            "expected the 0001/0002 definer functions: {definers:?}"
        ));
    }
    for (function, config, public) in definers {
        let path = config
            .as_deref()
            .and_then(|c| c.lines().find_map(|s| s.strip_prefix("search_path=")))
            .unwrap_or("");
        let path_ok = path.starts_with("pg_catalog")
            && path.ends_with("pg_temp")
            && !path.contains("public")
            && !path.contains("$user");
        if !path_ok || public {
            problems.push(format!(
                "{function}: search_path {path:?}, PUBLIC may execute: {public}"
            ));
        }
    }
    problems
}

/// What `agentry_app` may do: nothing on the mapping, read-only tenants, append-only events,
/// never TRUNCATE, REFERENCES or TRIGGER; and the role itself holds no dangerous attribute.
async fn app_grants(admin: &PgPool) -> Vec<String> {
    let grants: Vec<(String, String)> = sqlx::query_as(
        "select table_name::text, privilege_type::text
           from information_schema.role_table_grants
          where grantee = 'agentry_app' and table_schema = 'agentry'",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    let mut problems = Vec::new();
    for (table, privilege) in grants {
        let allowed = match table.as_str() {
            "tenant_roles" => false,
            "tenants" => privilege == "SELECT",
            "events" => ["SELECT", "INSERT"].contains(&privilege.as_str()),
            _ => ["SELECT", "INSERT", "UPDATE", "DELETE"].contains(&privilege.as_str()),
        };
        if !allowed {
            problems.push(format!("agentry_app holds {privilege} on {table}"));
        }
    }
    let app: (bool, bool, bool, bool) = sqlx::query_as(
        "select rolsuper, rolbypassrls, rolcreaterole, rolcanlogin
           from pg_roles where rolname = 'agentry_app'",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    if app != (false, false, false, false) {
        problems.push(format!(
            "agentry_app (superuser, bypassrls, createrole, login) = {app:?}"
        ));
    }
    problems
}
