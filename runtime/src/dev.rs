//! `agentry-runtime dev`: the whole platform on one machine, from a folder of YAML.
//!
//! With an administrator URL it creates the database if needed, migrates it, creates the
//! shared dev role (the only role that names its tenant per transaction), creates each
//! tenant's row and, on first start, an admin API key per tenant. It then serves as the shared
//! role, never as the administrator. Keys are kept in `<state dir>/keys.json` (mode 0600) so
//! that a restart shows them again; the database holds only their hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use agentry_crds::RuntimeBundle;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use uuid::Uuid;

use crate::bundles::{FolderSource, TenantProvisioner, TenantRegistry};
use crate::cli::DevArgs;
use crate::db::Db;
use crate::gateway::{Scope, apikeys};
use crate::serve::Runtime;
use crate::tenancy::TenantId;

/// A tenant's admin key, as kept in `keys.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevKey {
    /// Row id of the key.
    pub id: Uuid,
    /// The key.
    pub key: String,
}

/// `agentry-runtime dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init("agentry-runtime", args.common.log_json);
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let admin_options =
        PgConnectOptions::from_str(&args.database_url).context("AGENTRY_DATABASE_URL")?;
    ensure_database(&admin_options).await?;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(admin_options.clone())
        .await
        .context("connecting as the database administrator")?;
    crate::db::migrate(&admin)
        .await
        .context("applying migrations")?;
    let password = ensure_dev_role(&admin, &args.dev_role, &args.state_dir).await?;
    let provisioner = Arc::new(DevProvisioner {
        admin,
        keys_file: args.state_dir.join("keys.json"),
    });
    let db = Db::connect_with(
        admin_options.username(&args.dev_role).password(&password),
        args.common.db_max_connections,
    )
    .await?;
    let registry = Arc::new(TenantRegistry::new(args.manifests.display().to_string()));
    let source = FolderSource::open(args.manifests.clone(), provisioner.as_ref(), &registry)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut runtime = Runtime::start(db, registry.clone(), &args.common, true).await?;
    let state = &runtime.state;
    runtime.tasks.spawn(source.watch(
        provisioner.clone(),
        state.tenants.clone(),
        state.metrics.clone(),
        state.shutdown.clone(),
    ));
    let listener = crate::serve::bind(&args.common)?;
    print_banner(
        listener.local_addr()?,
        &args.state_dir,
        &provisioner.keys()?,
        &registry,
    );
    runtime.serve(listener, &args.common).await
}

/// Creates the database named in `options` when it does not exist.
async fn ensure_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut conn = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let create = format!("create database \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            // Another process may have created it meanwhile.
            tracing::debug!(error = %e, "create database");
        }
    }
    conn.close().await?;
    Ok(())
}

/// Creates (or re-passwords) the shared dev role and maps it as shared; returns its password.
async fn ensure_dev_role(admin: &PgPool, role: &str, state_dir: &Path) -> anyhow::Result<String> {
    if !role
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || role.is_empty()
        || role.len() > 63
    {
        anyhow::bail!(
            "dev role {role:?} must be a lower-case identifier (a-z, 0-9, _), at most 63 characters"
        );
    }
    let path = state_dir.join("db-password");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            let p = apikeys::generate().key_id + &apikeys::generate().key_id;
            write_private(&path, &p)?;
            p
        }
    };
    let mut tx = admin.begin().await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(role)
            .fetch_one(&mut *tx)
            .await?;
    let verb = if exists { "alter" } else { "create" };
    // The password is base62, so quoting it literally is safe.
    let sql = format!(
        "{verb} role {role} login nosuperuser nobypassrls nocreatedb nocreaterole password '{password}'"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("grant agentry_app to {role}")))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, null, true)
         on conflict (role_name) do update set tenant_id = null, shared = true",
    )
    .bind(role)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(password)
}

/// Gives every tenant of the folder a row and an admin key.
#[derive(Debug)]
pub struct DevProvisioner {
    admin: PgPool,
    keys_file: PathBuf,
}

impl DevProvisioner {
    /// The admin keys by tenant name.
    pub fn keys(&self) -> anyhow::Result<BTreeMap<String, DevKey>> {
        match std::fs::read_to_string(&self.keys_file) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading {}", self.keys_file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.keys_file.display())),
        }
    }

    async fn ensure_inner(&self, bundle: &RuntimeBundle) -> anyhow::Result<TenantId> {
        let t = &bundle.tenant;
        let id: Uuid = sqlx::query_scalar(
            "insert into agentry.tenants (id, name, display_name, plan, suspended) values ($1, $2, $3, $4, $5)
             on conflict (name) do update set display_name = excluded.display_name, plan = excluded.plan,
               suspended = excluded.suspended, updated_at = now()
             returning id",
        )
        .bind(Uuid::new_v4())
        .bind(&t.name)
        .bind(&t.display_name)
        .bind(&t.plan)
        .bind(t.suspended)
        .fetch_one(&self.admin)
        .await?;
        let mut keys = self.keys()?;
        let usable = match keys.get(&t.name) {
            Some(k) => sqlx::query_scalar::<_, bool>(
                "select exists (select 1 from agentry.api_keys where tenant_id = $1 and id = $2 and revoked_at is null)",
            )
            .bind(id)
            .bind(k.id)
            .fetch_one(&self.admin)
            .await?,
            None => false,
        };
        if !usable {
            let key = apikeys::generate();
            let key_row = Uuid::now_v7();
            let scopes: Vec<&str> = vec![Scope::Admin.as_str()];
            sqlx::query(
                "insert into agentry.api_keys (tenant_id, id, key_id, secret_hash, name, scopes) values ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(key_row)
            .bind(&key.key_id)
            .bind(&key.secret_hash)
            .bind("dev admin")
            .bind(&scopes)
            .execute(&self.admin)
            .await?;
            keys.insert(
                t.name.clone(),
                DevKey {
                    id: key_row,
                    key: key.plaintext,
                },
            );
            write_private(&self.keys_file, &serde_json::to_string_pretty(&keys)?)?;
        }
        Ok(TenantId(id))
    }
}

impl TenantProvisioner for DevProvisioner {
    async fn ensure(&self, bundle: &RuntimeBundle) -> Result<TenantId, String> {
        self.ensure_inner(bundle)
            .await
            .map_err(|e| format!("provisioning tenant {}: {e:#}", bundle.tenant.name))
    }
}

/// Writes `content` to `path` readable only by the owner.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn print_banner(
    address: std::net::SocketAddr,
    state_dir: &Path,
    keys: &BTreeMap<String, DevKey>,
    registry: &TenantRegistry,
) {
    let host = if address.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        address.ip().to_string()
    };
    let base = format!("http://{host}:{}", address.port());
    println!(
        "\nAgentry dev is serving {} tenant(s) at {base}",
        registry.all().len()
    );
    println!("API docs: {base}/docs");
    for tenant in registry.all() {
        if let Some(k) = keys.get(&tenant.name) {
            println!("\n  tenant {:<10} admin key {}", tenant.name, k.key);
            println!(
                "  curl -s -H 'Authorization: Bearer {}' {base}/api/v1/audit",
                k.key
            );
        }
    }
    println!(
        "\nKeys are kept in {} (mode 0600). Ctrl-C stops.\n",
        state_dir.join("keys.json").display()
    );
}
