//! Benchmark of the workflow orchestrator (`make bench`, `scripts/bench-workflows.sh`):
//!
//! 1. Engine overhead per step without I/O: runs of a chain of `tool` nodes (and of
//!    `transform` nodes) driven by `engine::drive` with a no-op executor and an in-memory
//!    journal, against a baseline measured in the same run: the same number of bare calls of
//!    the no-op executor.
//! 2. Checkpointed steps per second with PostgreSQL: the same tool chain journaled by
//!    `journal::PgJournal` (every step checkpointed with its events, fenced by the lease; the
//!    checkpoints of concurrent runs group-committed by one `CheckpointWriter`) for runs
//!    driven concurrently, against a baseline measured in the same run: single-row
//!    inserts, one transaction each, at the same concurrency, without and with the
//!    `pg_notify` that every event emission adds to its transaction.
//!
//! Uses a fresh database (migrated, one tenant, a non-superuser application role) on the
//! PostgreSQL at `AGENTRY_BENCH_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`) and
//! drops it afterwards. Knobs: `BENCH_WF_STEPS` (nodes per run, default 50),
//! `BENCH_WF_ENGINE_RUNS` (default 2000), `BENCH_WF_PG_RUNS` (default 200),
//! `BENCH_WF_CONCURRENCY` (default 16). Prints a table and one JSON line.

use std::hint::black_box;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_crds::bundle::{CompiledWorkflow, compile, group_by_tenant, parse_documents};
use agentry_runtime::db::{self, Db};
use agentry_runtime::orchestrator::engine::{Journal, NodeExecutor, WorkCall, drive};
use agentry_runtime::orchestrator::hub::{RunHub, WorkerConfig};
use agentry_runtime::orchestrator::journal::{CheckpointWriter, PgJournal};
use agentry_runtime::orchestrator::model::{Run, RunStatus, StepRecord};
use agentry_runtime::orchestrator::store::{self, StoredPrincipal};
use agentry_runtime::tenancy::TenantId;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use uuid::Uuid;

/// Answers every call at once with a fixed value.
struct NoopExecutor {
    output: Value,
}

impl NodeExecutor for NoopExecutor {
    async fn execute(&self, _call: WorkCall) -> Result<Value, String> {
        Ok(self.output.clone())
    }
}

/// Keeps every step in memory, as a journal that never fails.
#[derive(Default)]
struct MemoryJournal {
    steps: Vec<StepRecord>,
    checkpoints: u64,
}

impl Journal for MemoryJournal {
    type Error = std::convert::Infallible;

    async fn checkpoint(&mut self, _run: &Run, steps: &[StepRecord]) -> Result<(), Self::Error> {
        self.checkpoints += 1;
        self.steps.extend_from_slice(steps);
        Ok(())
    }
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// A tenant, a no-op builtin tool and two workflows of `n` nodes then `end`: one of `tool`
/// nodes, one of `transform` nodes (a template and a CEL expression each).
fn workflows(n: usize) -> anyhow::Result<(CompiledWorkflow, CompiledWorkflow)> {
    let mut yaml = String::from(
        "apiVersion: agentry.dev/v1alpha1
kind: Tenant
metadata: {name: bench}
spec:
  providers: [{name: local, type: builtin}]
  models: [{name: small, provider: local}]
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: noop, namespace: tenant-bench}
spec:
  description: Does nothing.
  type: builtin
  builtin: {name: current_time}
",
    );
    for (name, node) in [
        (
            "tools",
            "tool: {name: noop, args: {orderId: \"{{ input.orderId }}\"}}",
        ),
        (
            "transforms",
            "transform: {template: {id: \"{{ input.orderId }}\"}, cel: {n: \"size(input.orderId)\"}}",
        ),
    ] {
        yaml.push_str(&format!(
            "---
apiVersion: agentry.dev/v1alpha1
kind: Workflow
metadata: {{name: {name}, namespace: tenant-bench}}
spec:
  input: {{schema: {{type: object}}}}
  start: s0
  limits: {{maxSteps: {max}, timeoutSeconds: 3600}}
  nodes:
",
            max = n + 10
        ));
        for i in 0..n {
            let next = if i + 1 == n {
                "end".to_owned()
            } else {
                format!("s{}", i + 1)
            };
            yaml.push_str(&format!(
                "    - {{id: s{i}, {node}, output: out{i}, next: {next}}}\n"
            ));
        }
        yaml.push_str("    - {id: end, end: {result: {done: true}}}\n");
    }
    let (resources, errors) = parse_documents(&yaml);
    if !errors.is_empty() {
        bail!("benchmark manifests do not parse: {errors:?}");
    }
    let (sources, diagnostics) = group_by_tenant(resources);
    if !diagnostics.is_empty() {
        bail!("benchmark manifests: {diagnostics:?}");
    }
    let compilation = compile(sources.first().context("no tenant")?);
    if !compilation.diagnostics.is_empty() {
        bail!("benchmark workflows: {:?}", compilation.diagnostics);
    }
    let get = |name: &str| {
        compilation
            .bundle
            .workflows
            .get(name)
            .cloned()
            .with_context(|| format!("workflow {name} did not compile"))
    };
    Ok((get("tools")?, get("transforms")?))
}

fn new_run(workflow: &CompiledWorkflow) -> Run {
    let mut run = Run::new(
        Uuid::now_v7(),
        workflow.clone(),
        json!({"orderId": "A-1001"}),
        json!({}),
        chrono::Utc::now(),
    );
    run.status = RunStatus::Running;
    run
}

/// Drives `runs` runs of `workflow` in memory; returns the time spent in `drive` and the
/// steps recorded.
async fn drive_in_memory(
    workflow: &CompiledWorkflow,
    executor: &NoopExecutor,
    runs: usize,
) -> anyhow::Result<(Duration, u64)> {
    let mut spent = Duration::ZERO;
    let mut steps = 0u64;
    for _ in 0..runs {
        let mut run = new_run(workflow);
        let mut journal = MemoryJournal::default();
        let started = Instant::now();
        let Ok(()) = drive(&mut run, executor, &mut journal).await;
        spent += started.elapsed();
        if run.status != RunStatus::Succeeded {
            bail!("a benchmark run ended {:?}: {:?}", run.status, run.error);
        }
        steps += journal.steps.len() as u64;
        black_box(&journal);
    }
    Ok((spent, steps))
}

/// The baseline: `calls` bare calls of the executor with a prepared call.
async fn bare_calls(executor: &NoopExecutor, calls: u64) -> anyhow::Result<Duration> {
    let call = WorkCall {
        run_id: Uuid::now_v7(),
        node: "s0".to_owned(),
        visit: 1,
        attempt: 1,
        idempotency_key: format!("{}:s0:1", Uuid::now_v7()),
        deadline: chrono::Utc::now() + chrono::Duration::hours(1),
        work: agentry_runtime::orchestrator::engine::Work::Tool {
            tool: "noop".to_owned(),
            args: json!({"orderId": "A-1001"}),
        },
    };
    let started = Instant::now();
    for _ in 0..calls {
        let out = executor
            .execute(black_box(call.clone()))
            .await
            .map_err(anyhow::Error::msg)?;
        black_box(out);
    }
    Ok(started.elapsed())
}

struct EngineFigures {
    steps: u64,
    tool_us: f64,
    transform_us: f64,
    baseline_us: f64,
}

async fn engine_overhead(
    tools: &CompiledWorkflow,
    transforms: &CompiledWorkflow,
    runs: usize,
) -> anyhow::Result<EngineFigures> {
    let executor = NoopExecutor {
        output: json!({"id": "rf-1", "status": "issued"}),
    };
    // Warm-up (allocator, template and CEL caches).
    drive_in_memory(tools, &executor, runs / 10 + 1).await?;
    drive_in_memory(transforms, &executor, runs / 10 + 1).await?;
    let (tool_time, steps) = drive_in_memory(tools, &executor, runs).await?;
    let (transform_time, transform_steps) = drive_in_memory(transforms, &executor, runs).await?;
    let baseline = bare_calls(&executor, steps).await?;
    let per = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n as f64;
    Ok(EngineFigures {
        steps,
        tool_us: per(tool_time, steps),
        transform_us: per(transform_time, transform_steps),
        baseline_us: per(baseline, steps),
    })
}

/// A fresh migrated database with one tenant and a non-superuser application role.
struct BenchDb {
    server: PgConnectOptions,
    name: String,
    role: String,
    admin: sqlx::PgPool,
    app: Db,
    tenant: TenantId,
}

impl BenchDb {
    async fn create(url: &str, connections: u32) -> anyhow::Result<Self> {
        let server = PgConnectOptions::from_str(url)?;
        let suffix = &Uuid::new_v4().simple().to_string()[..12];
        let name = format!("agentry_wfbench_{suffix}");
        let role = format!("agentry_wfbench_{suffix}");
        let mut conn = server.connect().await.context("connecting to PostgreSQL")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(server.clone().database(&name))
            .await?;
        db::migrate(&admin).await?;
        let tenant = TenantId(Uuid::new_v4());
        sqlx::query("insert into agentry.tenants (id, name) values ($1, 'bench')")
            .bind(tenant.0)
            .execute(&admin)
            .await?;
        let password = Uuid::new_v4().simple().to_string();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "create role {role} login password '{password}'; grant agentry_app to {role};
             create table public.bench_inserts (tenant_id uuid not null, id uuid primary key,
                                                payload jsonb not null);
             grant insert on public.bench_inserts to {role};"
        )))
        .execute(&admin)
        .await?;
        sqlx::query(
            "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, $2, false)",
        )
        .bind(&role)
        .bind(tenant.0)
        .execute(&admin)
        .await?;
        let app = Db::connect_with(
            server
                .clone()
                .database(&name)
                .username(&role)
                .password(&password),
            connections,
        )
        .await?;
        Ok(Self {
            server,
            name,
            role,
            admin,
            app,
            tenant,
        })
    }

    async fn drop_all(self) -> anyhow::Result<()> {
        self.app.pool().close().await;
        self.admin.close().await;
        let mut conn = self.server.connect().await?;
        // Two statements: DROP DATABASE refuses to run inside the implicit transaction of a
        // multi-statement query.
        for statement in [
            format!("drop database if exists {} with (force)", self.name),
            format!("drop role if exists {}", self.role),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

struct PgFigures {
    runs: usize,
    steps: u64,
    steps_per_second: f64,
    inserts_per_second: f64,
    notifying_inserts_per_second: f64,
    synchronous_commit: String,
}

async fn checkpointed_steps(
    bench: &BenchDb,
    workflow: &CompiledWorkflow,
    runs: usize,
    concurrency: usize,
) -> anyhow::Result<PgFigures> {
    let hub = Arc::new(RunHub::new(WorkerConfig {
        concurrency,
        lease: Duration::from_secs(600),
        poll: Duration::from_millis(500),
    }));
    let principal = StoredPrincipal::ApiKey { id: Uuid::new_v4() };
    for _ in 0..runs {
        let run = Run::new(
            Uuid::now_v7(),
            workflow.clone(),
            json!({"orderId": "A-1001"}),
            json!({}),
            chrono::Utc::now(),
        );
        store::create(
            &bench.app,
            bench.tenant,
            &run,
            "key:bench",
            &principal,
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating a run: {}", e.message))?;
    }
    let claimed = store::claim(
        &bench.app,
        bench.tenant,
        hub.owner,
        hub.config.lease,
        runs as i64,
    )
    .await?;
    if claimed.len() != runs {
        bail!("claimed {} of {runs} runs", claimed.len());
    }
    let writer = CheckpointWriter::spawn(bench.app.clone());
    let queue = Arc::new(tokio::sync::Mutex::new(claimed));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, hub, checkpoints, tenant) = (
            queue.clone(),
            hub.clone(),
            writer.queue().clone(),
            bench.tenant,
        );
        workers.push(tokio::spawn(async move {
            let executor = NoopExecutor {
                output: json!({"id": "rf-1", "status": "issued"}),
            };
            let mut steps = 0u64;
            loop {
                let Some(row) = queue.lock().await.pop() else {
                    return Ok::<_, anyhow::Error>(steps);
                };
                let mut run = row.to_run();
                let mut journal = PgJournal {
                    writer: &checkpoints,
                    tenant,
                    tenant_name: "bench",
                    owner: hub.owner,
                    hub: &hub,
                    metrics: None,
                    actor: "key:bench".to_owned(),
                };
                drive(&mut run, &executor, &mut journal)
                    .await
                    .map_err(|e| anyhow::anyhow!("checkpoint: {e}"))?;
                if run.status != RunStatus::Succeeded {
                    bail!("a benchmark run ended {:?}: {:?}", run.status, run.error);
                }
                steps += u64::from(run.cursor.steps);
            }
        }));
    }
    let mut steps = 0;
    for worker in workers {
        steps += worker.await??;
    }
    let elapsed = started.elapsed();
    let stored: i64 = sqlx::query_scalar("select count(*) from agentry.workflow_steps")
        .fetch_one(&bench.admin)
        .await?;
    if u64::try_from(stored)? != steps {
        bail!("{steps} steps driven but {stored} stored");
    }

    // Baseline: as many single-row inserts, one transaction each, at the same concurrency.
    let per_worker = steps / concurrency as u64;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (pool, tenant) = (bench.app.pool().clone(), bench.tenant);
        workers.push(tokio::spawn(async move {
            for _ in 0..per_worker {
                sqlx::query(
                    "insert into public.bench_inserts (tenant_id, id, payload) values ($1, $2, $3)",
                )
                .bind(tenant.0)
                .bind(Uuid::now_v7())
                .bind(json!({"node": "s0", "status": "succeeded", "output": {"id": "rf-1"}}))
                .execute(&pool)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let insert_elapsed = started.elapsed();

    // Second baseline: the same inserts, each transaction also sending the `pg_notify` that
    // every event emission sends. PostgreSQL serialises the commits of notifying transactions
    // (a global lock from pre-commit until the commit is flushed), so this bounds what any
    // one-transaction-per-step journal that emits events can reach.
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (pool, tenant) = (bench.app.pool().clone(), bench.tenant);
        workers.push(tokio::spawn(async move {
            for _ in 0..per_worker {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "insert into public.bench_inserts (tenant_id, id, payload) values ($1, $2, $3)",
                )
                .bind(tenant.0)
                .bind(Uuid::now_v7())
                .bind(json!({"node": "s0", "status": "succeeded", "output": {"id": "rf-1"}}))
                .execute(&mut *tx)
                .await?;
                sqlx::query("select pg_notify('agentry_bench', '')")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let notify_elapsed = started.elapsed();
    let synchronous_commit: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&bench.admin)
        .await?;
    Ok(PgFigures {
        runs,
        steps,
        steps_per_second: steps as f64 / elapsed.as_secs_f64(),
        inserts_per_second: (per_worker * concurrency as u64) as f64 / insert_elapsed.as_secs_f64(),
        notifying_inserts_per_second: (per_worker * concurrency as u64) as f64
            / notify_elapsed.as_secs_f64(),
        synchronous_commit,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("BENCH_WF_STEPS", 50)?;
    let engine_runs = env_usize("BENCH_WF_ENGINE_RUNS", 2000)?;
    let pg_runs = env_usize("BENCH_WF_PG_RUNS", 200)?;
    let concurrency = env_usize("BENCH_WF_CONCURRENCY", 16)?.max(1);
    let url = std::env::var("AGENTRY_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let (tools, transforms) = workflows(n)?;

    let engine = engine_overhead(&tools, &transforms, engine_runs).await?;
    println!(
        "workflow engine, no I/O ({} steps, {n} nodes per run):",
        engine.steps
    );
    println!(
        "  tool node (engine + no-op executor)   {:>8.2} µs/step",
        engine.tool_us
    );
    println!(
        "  transform node (template + CEL)       {:>8.2} µs/step",
        engine.transform_us
    );
    println!(
        "  baseline: bare no-op executor call    {:>8.2} µs/call",
        engine.baseline_us
    );
    println!(
        "  engine overhead per tool step          {:>8.2} µs (target ≤ 50)",
        engine.tool_us - engine.baseline_us
    );

    let bench = BenchDb::create(&url, u32::try_from(concurrency)? + 4).await?;
    let pg = checkpointed_steps(&bench, &tools, pg_runs, concurrency).await;
    bench.drop_all().await?;
    let pg = pg?;
    println!(
        "checkpointed steps with PostgreSQL ({} runs of {n} tool nodes, {concurrency} concurrent, synchronous_commit={}):",
        pg.runs, pg.synchronous_commit
    );
    println!(
        "  steps/s (PgJournal, group-committed)        {:>9.0} (target ≥ 1000)",
        pg.steps_per_second
    );
    println!(
        "  baseline: single-row inserts/s             {:>9.0}",
        pg.inserts_per_second
    );
    println!(
        "  baseline: single-row inserts + pg_notify/s {:>9.0}",
        pg.notifying_inserts_per_second
    );
    println!(
        "{}",
        json!({"nodesPerRun": n, "engineSteps": engine.steps,
               "toolStepUs": engine.tool_us, "transformStepUs": engine.transform_us,
               "bareCallUs": engine.baseline_us,
               "engineOverheadUs": engine.tool_us - engine.baseline_us,
               "pgRuns": pg.runs, "pgSteps": pg.steps, "concurrency": concurrency,
               "pgStepsPerSecond": pg.steps_per_second,
               "insertsPerSecond": pg.inserts_per_second,
               "notifyingInsertsPerSecond": pg.notifying_inserts_per_second,
               "synchronousCommit": pg.synchronous_commit})
    );
    Ok(())
}
