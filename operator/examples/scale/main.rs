//! The operator at scale: build and compile time per tenant, API requests and CPU time per
//! reconcile (new and converged tenants), and memory with many tenants in the controller's
//! caches. Run by `make bench` (`scripts/bench-operator.sh`); figures in docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release -p agentry-operator --example scale -- reconcile 1 100 10000
//! cargo run --release -p agentry-operator --example scale -- memory 10000
//! ```
//!
//! The reconcile is the operator's own (`controller::reconcile_cached`, with `finalizer()`), talking
//! through a real `kube::Client` to an in-process API server on another thread
//! (`api.rs`), so the operator thread's CPU time is its own work: building, compiling,
//! serializing requests and parsing answers. The database is an in-memory provisioner (the
//! real one is measured by nothing here: its cost is PostgreSQL's).

/// The operator binary's allocator, configured as it is (`.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod api;
mod measure;
mod memory;
mod reconcile;
mod world;

use std::sync::Arc;

use agentry_operator::cli::{Cli, Command};
use agentry_operator::controller::Context;
use agentry_operator::database::{
    DatabaseError, ExistingCredentials, Provisioned, Provisioner, RoleName, TenantRecord,
};
use agentry_operator::metrics::Metrics;
use agentry_operator::settings::Settings;
use anyhow::{Context as _, bail};
use clap::Parser as _;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use kube::Client;
use kube::runtime::events::Reporter;
use uuid::Uuid;

/// The operator's settings with every default, as `agentry-operator run` gets them.
fn settings() -> anyhow::Result<Settings> {
    let cli = Cli::try_parse_from([
        "agentry-operator",
        "run",
        "--database-url",
        "postgres://agentry_admin@postgres.agentry-system.svc:5432/agentry",
    ])?;
    let Command::Run(args) = cli.command else {
        bail!("not the run command");
    };
    Ok(Settings::from_args(&args, "agentry-system")?)
}

/// The database, in memory: a fixed role password and key the first time, then whatever
/// the credentials Secret holds, like `PgProvisioner` does.
#[derive(Debug, Default)]
struct MemoryProvisioner;

impl Provisioner for MemoryProvisioner {
    fn ensure<'a>(
        &'a self,
        tenant: &'a TenantRecord,
        existing: &'a ExistingCredentials,
    ) -> BoxFuture<'a, Result<Provisioned, DatabaseError>> {
        async move {
            let role = RoleName::for_tenant(&tenant.name)?;
            Ok(Provisioned {
                tenant_id: Uuid::from_u128(0x5ca1e),
                role: role.as_str().to_owned(),
                password: existing
                    .password
                    .clone()
                    .unwrap_or_else(|| "BenchPassword0123456789abcdefABCD".to_owned()),
                admin_api_key: existing.admin_api_key.clone().unwrap_or_else(|| {
                    "agk_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".to_owned()
                }),
                password_rotated: existing.password.is_none(),
                admin_key_created: existing.admin_api_key.is_none(),
            })
        }
        .boxed()
    }

    fn remove<'a>(
        &'a self,
        _tenant: &'a str,
        _on_delete: agentry_crds::tenant::OnDelete,
    ) -> BoxFuture<'a, Result<(), DatabaseError>> {
        async { Ok(()) }.boxed()
    }
}

/// A controller context whose client talks to `server` on its own thread.
fn context<S: api::Server>(server: S) -> anyhow::Result<(Arc<Context>, api::SharedServer<S>)> {
    let (service, handle) = tower_test::mock::pair();
    let shared = Arc::new(std::sync::Mutex::new(api::Shared {
        server,
        counts: api::Counts::default(),
    }));
    api::spawn(handle, shared.clone())?;
    let ctx = context_with_client(Client::new(service, "default"))?;
    Ok((ctx, shared))
}

/// A controller context with the operator's default settings talking through `client`.
fn context_with_client(client: Client) -> anyhow::Result<Arc<Context>> {
    Ok(Arc::new(Context::new(
        client,
        settings()?,
        Arc::new(MemoryProvisioner),
        Arc::new(Metrics::new()),
        Reporter {
            controller: "agentry-operator".to_owned(),
            instance: None,
        },
    )))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counts = |rest: &[String]| -> anyhow::Result<Vec<usize>> {
        rest.iter()
            .map(|n| {
                n.parse::<usize>()
                    .with_context(|| format!("not a count: {n}"))
            })
            .collect()
    };
    match args.split_first() {
        Some((mode, rest)) if mode == "reconcile" => {
            let template = world::Template::load()?;
            for n in counts(rest)? {
                reconcile::run(&template, n)?;
            }
            Ok(())
        }
        Some((mode, rest)) if mode == "memory" => {
            let n = counts(rest)?.first().copied().unwrap_or(10_000);
            memory::run(n)
        }
        // The API server of the memory run, started by it as a process of its own.
        Some((mode, rest)) if mode == memory::SERVE_API => {
            let template = world::Template::load()?;
            let n = counts(rest)?.first().copied().unwrap_or(10_000);
            memory::serve_api(&template, n)
        }
        _ => bail!("usage: scale reconcile <tenants>... | scale memory <tenants>"),
    }
}
