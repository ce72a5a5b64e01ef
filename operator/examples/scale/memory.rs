//! The operator's memory with `n` tenants: the real controller (`controller::run`: the Tenant
//! reflector store, the metadata-only watches of every owned and tenant-namespace kind, the
//! scheduler, one converged reconcile of every tenant) against an API server that serves `n`
//! copies of one converged tenant over HTTP from a process of its own (this example, run as
//! `scale serve-api <n>`), so that the process measured holds the operator and its HTTP
//! client only, as in a cluster. RSS is read before the controller starts and once every
//! tenant has been reconciled and the requests have stopped.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use kube::Client;
use serde_json::{Map, Value, json};

use crate::api::{Counts, PROGRESS_PATH, Progress, Replica, Shared};
use crate::measure::{Memory, memory_kib};
use crate::reconcile::{TENANTS, converged_store};
use crate::world::{Template, tenant_name};

/// The mode that runs the memory run's API server.
pub const SERVE_API: &str = "serve-api";
const LISTENING: &str = "listening on ";

/// `fieldsV1` as the API server records ownership of `value` (maps by key, lists of named
/// objects by name or type), so that the Tenants in the cache are as large as real ones.
fn fields(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(format!("f:{k}"), fields(v));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Map::new();
            for item in items {
                let key = ["name", "type", "key"]
                    .iter()
                    .find_map(|k| item.get(*k).map(|v| format!("k:{{\"{k}\":{v}}}")))
                    .unwrap_or_else(|| format!("v:{item}"));
                let mut inner = match fields(item) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                inner.insert(".".to_owned(), json!({}));
                out.insert(key, Value::Object(inner));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// What a Tenant carries in a real cluster besides spec and status: the managed fields of
/// whoever applied it (`kubectl` or Argo CD), of the operator's status and of its finalizer,
/// and the last-applied copy of a client-side apply.
fn with_managed_fields(tenant: &mut Value) {
    let time = "2026-11-26T08:00:00Z";
    let entry = |manager: &str, operation: &str, sub: Option<&str>, f: Value| {
        let mut e = json!({
            "manager": manager, "operation": operation, "apiVersion": "agentry.dev/v1alpha1",
            "time": time, "fieldsType": "FieldsV1", "fieldsV1": f,
        });
        if let Some(s) = sub {
            e["subresource"] = json!(s);
        }
        e
    };
    let spec = json!({"f:spec": fields(&tenant["spec"])});
    let status = json!({"f:status": fields(&tenant["status"])});
    let finalizers =
        json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"agentry.dev/cleanup\"": {}}}});
    tenant["metadata"]["managedFields"] = json!([
        entry("kubectl", "Apply", None, spec),
        entry("agentry-operator", "Update", None, finalizers),
        entry("agentry-operator", "Apply", Some("status"), status),
    ]);
    tenant["metadata"]["creationTimestamp"] = json!(time);
    // A client-side `kubectl apply` (or Argo CD's default sync) keeps the whole object here.
    let applied = json!({
        "apiVersion": tenant["apiVersion"], "kind": tenant["kind"],
        "metadata": {"name": tenant["metadata"]["name"]}, "spec": tenant["spec"],
    });
    tenant["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration": applied.to_string()});
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Serves `n` tenants over HTTP until standard input closes (the memory run holds it open).
/// Prints what a tenant is made of, then the line the memory run waits for.
pub fn serve_api(template: &Template, n: usize) -> anyhow::Result<()> {
    let mut store = converged_store(template)?;
    let tenant_path = format!("{TENANTS}/{}", tenant_name(0));
    let tenant = store
        .objects
        .get_mut(&tenant_path)
        .context("tenant 0 is in the store")?;
    with_managed_fields(tenant);
    let tenant_bytes = serde_json::to_vec(tenant)?.len();
    let hashes = (0..n)
        .map(|i| {
            agentry_crds::bundle::compile(&template.tenant(i).sources())
                .bundle
                .hash
        })
        .collect();
    let replica = Replica::new(&store, hashes)?;
    println!(
        "per tenant: 1 Tenant ({tenant_bytes} bytes of JSON with managed fields) and {} other objects the watches list",
        store.objects.len() - 1
    );
    drop(store);
    // The memory run ending (or failing) ends this process too.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{LISTENING}http://{}", listener.local_addr()?);
        let shared = Arc::new(Mutex::new(Shared {
            server: replica,
            counts: Counts::default(),
        }));
        crate::api::serve_http(shared, listener).await
    })
}

/// The API server process, killed when dropped.
struct ApiServer(Child);

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `scale serve-api <n>`; returns it and its URL once it listens.
fn start_api_server(n: usize) -> anyhow::Result<(ApiServer, String)> {
    let child = Command::new(std::env::current_exe()?)
        .args([SERVE_API, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the API server process")?;
    let mut server = ApiServer(child);
    let stdout = server.0.stdout.take().context("the API server's output")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix(LISTENING) {
            Some(url) => return Ok((server, url.to_owned())),
            None => println!("{line}"),
        }
    }
    anyhow::bail!("the API server process ended before it listened")
}

/// Runs the controller over `n` tenants and prints the memory it holds.
pub fn run(n: usize) -> anyhow::Result<()> {
    println!("== memory with {n} tenants ==");
    let (_server, url) = start_api_server(n)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The client's request buffer is a task on this runtime.
    let _entered = runtime.enter();
    let client = Client::try_from(kube::Config::new(url.parse()?))?;
    let ctx = crate::context_with_client(client.clone())?;
    let baseline = memory_kib()?;
    // The default of `--concurrency`.
    let concurrency = 4;
    let stop = tokio_util::sync::CancellationToken::new();
    let controller = runtime.spawn(agentry_operator::controller::run(
        ctx,
        concurrency,
        stop.clone().cancelled_owned(),
    ));
    let started = Instant::now();
    let progress = runtime.block_on(settle(&client, n))?;
    let took = started.elapsed();
    let after = memory_kib()?;
    stop.cancel();
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    });

    println!(
        "controller started, listed and reconciled every tenant in {:.1} s",
        took.as_secs_f64()
    );
    let counts = &progress.counts;
    println!(
        "requests: {} ({} lists, {} watches open, {} get, {} apply, {} status writes, {} events)",
        counts.requests,
        counts.lists,
        counts.watches,
        counts.gets,
        counts.applies,
        counts.status_writes,
        counts.events
    );
    println!("tenants reconciled: {}", progress.reconciled);
    let line = |what: &str, m: &Memory| {
        println!(
            "RSS {what:<34} {:>6.1} MiB (heap and stacks {:.1}, executable and libraries {:.1})",
            mib(m.rss),
            mib(m.anon),
            mib(m.file)
        );
    };
    line("before the controller started:", &baseline);
    line(&format!("with {n} tenants:"), &after);
    println!(
        "RSS added by the tenants:              {:>6.1} MiB ({:.0} bytes per tenant)",
        mib(after.rss.saturating_sub(baseline.rss)),
        after.rss.saturating_sub(baseline.rss) as f64 * 1024.0 / n as f64
    );
    println!(
        "peak RSS (VmHWM):                      {:>6.1} MiB",
        mib(after.peak)
    );
    println!();
    ensure!(
        progress.reconciled >= n,
        "only {} of {n} tenants were reconciled",
        progress.reconciled
    );
    Ok(())
}

/// Waits until every tenant has been reconciled (one namespace read each) and no request
/// has come for two seconds (the progress reads aside); returns the progress then.
async fn settle(client: &Client, n: usize) -> anyhow::Result<Progress> {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last = Counts::default();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let request = http::Request::get(PROGRESS_PATH).body(Vec::new())?;
        // Served beside the API, so not among the requests counted.
        let progress: Progress = client.request(request).await?;
        if progress.counts != last {
            last = progress.counts.clone();
            quiet_since = Instant::now();
        } else if progress.reconciled >= n && quiet_since.elapsed() >= Duration::from_secs(2) {
            return Ok(progress);
        }
        ensure!(
            Instant::now() < deadline,
            "not settled after 15 minutes: {} of {n} reconciled",
            progress.reconciled
        );
    }
}
