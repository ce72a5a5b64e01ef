//! Load generator for `POST /v1/chat/completions` and `/ws/chat` (scripts/bench.sh). Three modes:
//!
//! - closed loop (default): `loadgen --url http://127.0.0.1:8080/v1 --key KEY --concurrency 16
//!   --requests 20000`. Each of `--concurrency` workers sends its next request as soon as the
//!   previous one is answered, until `--requests` have been sent in all. Latency is measured per
//!   request (for `--stream`, to the first `data:` chunk and to the end of the stream).
//! - open loop (`--rate R --duration-secs S`): requests start on a fixed schedule whatever the
//!   answers, to drive a server past its capacity; reports admitted and shed answers apart.
//! - idle WebSockets (`--ws-idle N --pid PID`): opens N authenticated `/ws/chat` sockets, keeps
//!   them idle (answering pings) and reports the server's resident memory before and after.
//!
//! Each prints one JSON object with exact percentiles (every sample is kept: a run is bounded,
//! so memory is too).

mod bare_http;
mod open_loop;
mod server_cpu;
mod ws_idle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// Load generator arguments.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
struct Args {
    /// Base URL ending in `/v1` (the mock's or the runtime's).
    #[arg(long)]
    url: String,
    /// Bearer key to send.
    #[arg(long)]
    key: Option<String>,
    /// Model to ask for.
    #[arg(long, default_value = "fast")]
    model: String,
    /// The user message sent. The mock upstream reads directives from it, such as `#slow 100`
    /// on a line of its own (wait 100 ms before answering): an upstream as slow as a real one.
    #[arg(long, default_value = "Say hello in five words.")]
    message: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// Requests to send in all (after the warm-up).
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Requests sent before measuring (connections, caches), not counted.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Ask for a server-sent-event stream and measure time to the first `data:` chunk.
    #[arg(long)]
    stream: bool,
    /// Label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Open loop: requests started per second, on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: how long to send, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Open loop: most requests this client keeps open; a request due beyond it is not sent
    /// (and counted as such), so that an unshed overload cannot exhaust file descriptors.
    #[arg(long, default_value_t = 4096)]
    max_open: usize,
    /// Open loop: the shortest time between two releases of due requests, in microseconds
    /// (each release wakes the client once; requests due meanwhile go out together).
    #[arg(long, default_value_t = 250)]
    pace_us: u64,
    /// Open loop: connections opened before the schedule starts (one request each); about as
    /// many as the run keeps open at once (its rate times the server's answer time).
    #[arg(long, default_value_t = 32)]
    warm_connections: usize,
    /// Idle WebSockets: how many to open on `/ws/chat` (the URL's host, `--key` as bearer).
    #[arg(long)]
    ws_idle: Option<usize>,
    /// The server's process: idle WebSockets read its resident memory; the other modes report
    /// its CPU time per request and how long it waited for a CPU (from /proc).
    #[arg(long)]
    pid: Option<u32>,
}

/// One request's timings, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    total: u64,
    first: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(if args.rate.is_some() {
            args.max_open
        } else {
            usize::try_from(args.concurrency).unwrap_or(usize::MAX)
        })
        .tcp_nodelay(true)
        .build()?;
    let target = Arc::new(Target {
        client,
        endpoint: format!("{}/chat/completions", args.url.trim_end_matches('/')),
        key: args.key.clone(),
        body: serde_json::to_vec(&json!({
            "model": args.model,
            "messages": [{"role": "user", "content": args.message}],
            "stream": args.stream,
            "max_tokens": 16,
        }))?,
        stream: args.stream,
    });

    if let Some(n) = args.ws_idle {
        let pid = args
            .pid
            .context("--ws-idle needs --pid (the server's process)")?;
        let key = args.key.clone().context("--ws-idle needs --key")?;
        let mut report = ws_idle::run(&args.url, &key, n, pid).await?;
        report["label"] = json!(args.label);
        println!("{report}");
        return Ok(());
    }
    if let Some(rate) = args.rate {
        let (warmed, _) = run(&target, 4, args.warmup).await?;
        let before = args.pid.map(server_cpu::sample).transpose()?;
        // The generator's own CPU: an open loop this fast can saturate the load's core, and
        // then a late send, not the server, is what the latency figures carry.
        let client_before = server_cpu::sample(std::process::id()).ok();
        let bare = Arc::new(bare_http::BareClient::new(
            &target.endpoint,
            args.key.as_deref(),
            target.body.clone(),
        )?);
        let schedule = open_loop::Schedule {
            rate,
            duration_secs: args.duration_secs,
            pace: Duration::from_micros(args.pace_us),
            warm_connections: args.warm_connections,
        };
        let mut report = open_loop::run(&bare, &schedule, args.max_open).await?;
        report["label"] = json!(args.label);
        report["url"] = json!(target.endpoint);
        // Every answered request, the warm-ups' included (the usage check counts them).
        report["warmup_ok"] =
            json!(report["warmup_ok"].as_u64().unwrap_or(0) + warmed.len() as u64);
        let answered = report["ok"].as_u64().unwrap_or(0) + report["shed"].as_u64().unwrap_or(0);
        if let (Some(before), Some(after)) = (before, args.pid.map(server_cpu::sample).transpose()?)
        {
            report["server"] = server_cpu::report(&before, &after, answered as usize);
        }
        if let (Some(before), Ok(after)) = (client_before, server_cpu::sample(std::process::id())) {
            report["client"] = server_cpu::report(&before, &after, answered as usize);
        }
        println!("{report}");
        return Ok(());
    }

    let (warmed, _) = run(&target, args.concurrency, args.warmup).await?;
    let sched_before = args.pid.map(server_cpu::sample).transpose()?;
    let started = Instant::now();
    let (samples, errors) = run(&target, args.concurrency, args.requests).await?;
    let elapsed = started.elapsed();
    let sched_after = args.pid.map(server_cpu::sample).transpose()?;

    let mut totals: Vec<u64> = samples.iter().map(|s| s.total).collect();
    let mut firsts: Vec<u64> = samples.iter().map(|s| s.first).collect();
    let mut report = json!({
        "label": args.label,
        "url": args.url,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "ok": samples.len(),
        "warmup_ok": warmed.len(),
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "rps": samples.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        "latency_ms": summary(&mut totals),
    });
    if args.stream {
        report["ttft_ms"] = summary(&mut firsts);
    }
    if let (Some(before), Some(after)) = (sched_before, sched_after) {
        report["server"] = server_cpu::report(&before, &after, samples.len());
    }
    println!("{report}");
    Ok(())
}

pub(crate) struct Target {
    pub(crate) client: reqwest::Client,
    pub(crate) endpoint: String,
    pub(crate) key: Option<String>,
    pub(crate) body: Vec<u8>,
    pub(crate) stream: bool,
}

/// Sends `requests` requests over `concurrency` workers; returns the samples and the error count.
async fn run(
    target: &Arc<Target>,
    concurrency: u64,
    requests: u64,
) -> anyhow::Result<(Vec<Sample>, u64)> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (target, next, errors) = (target.clone(), next.clone(), errors.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                match one(&target).await {
                    Ok(sample) => samples.push(sample),
                    Err(e) => {
                        // Only the first few are printed: a broken setup fails every request.
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("request failed: {e:#}");
                        }
                    }
                }
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("worker panicked")?);
    }
    Ok((all, errors.load(Ordering::Relaxed)))
}

async fn one(target: &Target) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut request = target
        .client
        .post(&target.endpoint)
        .header("content-type", "application/json")
        .body(target.body.clone());
    if let Some(key) = &target.key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    if !target.stream {
        let body = response.bytes().await?;
        let total = micros(started.elapsed());
        // A 200 without a choice is a broken answer, not a fast one.
        let v: Value = serde_json::from_slice(&body)?;
        if v.pointer("/choices/0").is_none() {
            bail!("answer without choices");
        }
        return Ok(Sample {
            total,
            first: total,
        });
    }
    let mut first = None;
    let mut seen = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if first.is_none() {
            seen.extend_from_slice(&chunk);
            if seen.windows(5).any(|w| w == b"data:") {
                first = Some(micros(started.elapsed()));
            }
        }
    }
    let total = micros(started.elapsed());
    Ok(Sample {
        total,
        first: first.context("stream ended without a data: chunk")?,
    })
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// p50/p90/p99/max/mean in milliseconds (nearest-rank percentiles).
pub(crate) fn summary(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let rank = |p: f64| {
        let n = samples.len();
        let i = ((p / 100.0) * n as f64).ceil() as usize;
        samples[i.clamp(1, n) - 1] as f64 / 1000.0
    };
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    json!({
        "p50": rank(50.0),
        "p90": rank(90.0),
        "p99": rank(99.0),
        "max": rank(100.0),
        "mean": mean,
    })
}
