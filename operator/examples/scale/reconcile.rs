//! Reconciles `n` tenants one after another: each new tenant (the reconcile that adds the
//! finalizer, then the one that applies everything), then the same tenant again once it has
//! converged. Each reconcile starts as the controller's does: from the Tenant's cached
//! metadata, reading the Tenant. Measures the pure build and compile, the operator thread's
//! CPU time per reconcile, and the requests each reconcile makes; checks that the converged
//! reconcile changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentry_crds::Tenant;
use agentry_crds::bundle::compile;
use agentry_operator::builders::{self, Inputs};
use agentry_operator::controller::{Context, reconcile_cached};
use agentry_operator::database::Provisioned;
use agentry_operator::metrics::BundleLabels;
use anyhow::{Context as _, ensure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt as _};
use serde_json::Value;
use uuid::Uuid;

use crate::api::{Counts, Shared, Store, lock};
use crate::measure::{Summary, thread_cpu};
use crate::world::{Template, World};

pub const TENANTS: &str = "/apis/agentry.dev/v1alpha1/tenants";

/// Where the API server keeps each object of `world`.
pub fn paths(world: &World) -> anyhow::Result<Vec<(String, Value)>> {
    let name = world.tenant.metadata.name.clone().unwrap_or_default();
    let ns = world.tenant.spec.namespace.clone().unwrap_or_default();
    let crd = |resource: &str, n: &Option<String>| {
        format!(
            "/apis/agentry.dev/v1alpha1/namespaces/{ns}/{resource}/{}",
            n.clone().unwrap_or_default()
        )
    };
    let mut out = vec![(
        format!("{TENANTS}/{name}"),
        serde_json::to_value(&world.tenant)?,
    )];
    for a in &world.agents {
        out.push((crd("agents", &a.metadata.name), serde_json::to_value(a)?));
    }
    for t in &world.tools {
        out.push((crd("tools", &t.metadata.name), serde_json::to_value(t)?));
    }
    for w in &world.workflows {
        out.push((crd("workflows", &w.metadata.name), serde_json::to_value(w)?));
    }
    for f in &world.flags {
        out.push((
            crd("featureflags", &f.metadata.name),
            serde_json::to_value(f)?,
        ));
    }
    out.push((
        format!(
            "/api/v1/namespaces/{ns}/secrets/{}",
            world.tool_secret.metadata.name.clone().unwrap_or_default()
        ),
        serde_json::to_value(&world.tool_secret)?,
    ));
    Ok(out)
}

/// The Tenant as the controller's metadata-only watch would deliver it now.
fn current_tenant(
    shared: &Mutex<Shared<Store>>,
    name: &str,
) -> anyhow::Result<Arc<PartialObjectMeta<Tenant>>> {
    let metadata = lock(shared)
        .server
        .objects
        .get(&format!("{TENANTS}/{name}"))
        .map(|t| t["metadata"].clone())
        .context("the tenant is gone")?;
    let metadata: ObjectMeta = serde_json::from_value(metadata)?;
    Ok(Arc::new(metadata.into_response_partial::<Tenant>()))
}

/// What one tenant's runs measured.
#[derive(Debug, Default)]
struct Tenant1 {
    build_wall: Duration,
    build_cpu: Duration,
    compile_cpu: Duration,
    finalizer_cpu: Duration,
    new_cpu: Duration,
    new_counts: Counts,
    converged_cpu: Duration,
    converged_counts: Counts,
    converged_changed: bool,
}

/// Builds and compiles everything of `world` the way a reconcile does, without I/O: wall
/// time, CPU time, and the CPU time of the compile alone.
fn build(world: &World, ctx: &Context) -> (Duration, Duration, Duration) {
    let provisioned = Provisioned {
        tenant_id: Uuid::from_u128(1),
        role: "agentry_tenant_bench".to_owned(),
        password: "BenchPassword0123456789abcdefABCD".to_owned(),
        admin_api_key: "agk_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".to_owned(),
        password_rotated: false,
        admin_key_created: false,
    };
    let keys = BTreeMap::new();
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let compilation = compile(&world.sources());
    let json = compilation.bundle.to_canonical_json();
    let compiled = thread_cpu() - cpu;
    let desired = builders::desired(&Inputs {
        tenant: &world.tenant,
        settings: &ctx.settings,
        bundle: &compilation.bundle,
        bundle_json: &json,
        database: &provisioned,
        provider_keys: &keys,
    });
    std::hint::black_box((&compilation, &desired));
    (wall.elapsed(), thread_cpu() - cpu, compiled)
}

async fn one(
    world: &World,
    ctx: &Arc<Context>,
    shared: &Arc<Mutex<Shared<Store>>>,
) -> anyhow::Result<Tenant1> {
    let name = world.tenant.metadata.name.clone().unwrap_or_default();
    let mut m = Tenant1::default();
    (m.build_wall, m.build_cpu, m.compile_cpu) = build(world, ctx);
    {
        let mut g = lock(shared);
        g.server.objects = paths(world)?.into_iter().collect();
        g.server.applied.clear();
    }

    let before = lock(shared).counts.clone();
    // First the finalizer is added, then the watch brings the Tenant back and apply runs.
    let tenant = current_tenant(shared, &name)?;
    let cpu = thread_cpu();
    reconcile_cached(tenant, ctx.clone()).await?;
    m.finalizer_cpu = thread_cpu() - cpu;
    let tenant = current_tenant(shared, &name)?;
    let cpu = thread_cpu();
    reconcile_cached(tenant, ctx.clone()).await?;
    m.new_cpu = thread_cpu() - cpu;
    let first_applies = {
        let mut g = lock(shared);
        m.new_counts = g.counts.since(&before);
        std::mem::take(&mut g.server.applied)
    };

    let before = lock(shared).counts.clone();
    let tenant = current_tenant(shared, &name)?;
    let cpu = thread_cpu();
    reconcile_cached(tenant, ctx.clone()).await?;
    m.converged_cpu = thread_cpu() - cpu;
    let mut g = lock(shared);
    m.converged_counts = g.counts.since(&before);
    let again = std::mem::take(&mut g.server.applied);
    m.converged_changed = again != first_applies
        || m.converged_counts.status_writes > 0
        || m.converged_counts.events > 0
        || m.converged_counts.json_patches > 0;
    Ok(m)
}

/// The operator thread's CPU time of one request round trip with nothing to build or parse:
/// a GET of a missing object, answered 404 by the in-process API server (median of 1,000).
/// Each request of a reconcile costs at least this much on top of its own serializing and
/// parsing: the client's middleware, the transport, waking the server's thread and being woken.
async fn round_trips(ctx: &Context) -> anyhow::Result<Duration> {
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(ctx.client.clone(), "bench-round-trip");
    let mut samples = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let cpu = thread_cpu();
        let found = api.get_opt("missing").await?;
        samples.push(thread_cpu() - cpu);
        ensure!(found.is_none(), "the round-trip object exists");
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}

fn counts_line(c: &Counts) -> String {
    format!(
        "{} requests: {} get, {} list, {} apply, {} status, {} patch, {} delete, {} event",
        c.requests,
        c.gets,
        c.lists,
        c.applies,
        c.status_writes,
        c.json_patches,
        c.deletes,
        c.events
    )
}

/// Converges tenant 0 and leaves its objects in a fresh store (the memory run's template).
pub fn converged_store(template: &Template) -> anyhow::Result<Store> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The client's request buffer is a task on this runtime.
    let _entered = runtime.enter();
    let (ctx, shared) = crate::context(Store::default())?;
    let world = template.tenant(0);
    let m = runtime.block_on(one(&world, &ctx, &shared))?;
    ensure!(!m.converged_changed, "tenant 0 does not converge");
    let mut g = lock(&shared);
    let store = std::mem::take(&mut g.server);
    Ok(store)
}

/// Reconciles `n` tenants and prints what it measured.
pub fn run(template: &Template, n: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The client's request buffer is a task on this runtime.
    let _entered = runtime.enter();
    let (ctx, shared) = crate::context(Store::default())?;
    let round_trip = runtime.block_on(round_trips(&ctx))?;
    let started = Instant::now();
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let world = template.tenant(i);
        all.push(runtime.block_on(one(&world, &ctx, &shared))?);
    }
    let took = started.elapsed();
    let pick = |f: fn(&Tenant1) -> Duration| all.iter().map(f).collect::<Vec<_>>();
    let changed = all.iter().filter(|m| m.converged_changed).count();
    let same = |f: fn(&Tenant1) -> &Counts| all.windows(2).all(|w| f(&w[0]) == f(&w[1]));
    let last = all.last().context("no tenants")?;
    println!("== {n} tenants ({:.1} s) ==", took.as_secs_f64());
    println!(
        "build + compile, wall µs:        {}",
        Summary::of(&pick(|m| m.build_wall))
    );
    println!(
        "build + compile, CPU µs:         {}",
        Summary::of(&pick(|m| m.build_cpu))
    );
    println!(
        "  of which compile, CPU µs:      {}",
        Summary::of(&pick(|m| m.compile_cpu))
    );
    println!(
        "finalizer reconcile, CPU µs:     {}",
        Summary::of(&pick(|m| m.finalizer_cpu))
    );
    println!(
        "new tenant reconcile, CPU µs:    {}",
        Summary::of(&pick(|m| m.new_cpu))
    );
    println!(
        "converged reconcile, CPU µs:     {}",
        Summary::of(&pick(|m| m.converged_cpu))
    );
    // What is left once the converged reconcile's round trips (the I/O) are taken out.
    let converged_requests = u32::try_from(last.converged_counts.requests)?;
    let less_io = |m: &Tenant1| {
        m.converged_cpu
            .saturating_sub(round_trip * converged_requests)
    };
    println!(
        "request round trip, CPU µs:      {:.1} (a GET answered 404: client, transport, wakeups)",
        round_trip.as_secs_f64() * 1e6
    );
    println!(
        "converged less {converged_requests} round trips, CPU µs: {}",
        Summary::of(&all.iter().map(less_io).collect::<Vec<_>>())
    );
    println!(
        "new tenant (2 reconciles):       {}{}",
        counts_line(&last.new_counts),
        if same(|m| &m.new_counts) {
            ""
        } else {
            " (varies between tenants)"
        }
    );
    println!(
        "converged tenant (1 reconcile):  {}{}",
        counts_line(&last.converged_counts),
        if same(|m| &m.converged_counts) {
            ""
        } else {
            " (varies between tenants)"
        }
    );
    println!(
        "converged reconciles that changed something (apply body, status, event): {changed} of {n}"
    );
    let bundles = |outcome: &str| {
        ctx.metrics
            .bundles
            .get_or_create(&BundleLabels {
                outcome: outcome.to_owned(),
            })
            .get()
    };
    println!(
        "bundles compiled: {}, read back unchanged: {}",
        bundles("compiled"),
        bundles("reused")
    );
    println!("requests in total: {}", lock(&shared).counts.requests);
    println!();
    ensure!(
        changed == 0,
        "{changed} converged reconciles changed something"
    );
    Ok(())
}
