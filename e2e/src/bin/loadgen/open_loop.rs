//! Open loop: requests start on a fixed schedule, whatever the answers, so that a server past
//! its capacity has to shed (or queue) the excess. Latency runs from the scheduled start, so a
//! late start (the client's own backlog) counts against the server rather than hiding. Requests
//! go through [`BareClient`], the load generator's cheapest way to send them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::bare_http::BareClient;
use super::{micros, summary};

/// Connections opened before the run.
const WARM_CONNECTIONS: usize = 32;

/// How one request ended.
enum Outcome {
    Ok(u64),
    /// 503 or 429: shed or refused by a limit, with its latency.
    Shed(u64),
    Failed,
}

/// Sends `rate` requests per second for `duration_secs`; at most `max_open` open at once.
pub async fn run(
    target: &Arc<BareClient>,
    rate: f64,
    duration_secs: f64,
    max_open: usize,
) -> anyhow::Result<Value> {
    if !(rate > 0.0 && duration_secs > 0.0) {
        bail!("--rate and --duration-secs must be positive");
    }
    // Connections opened before the schedule starts, so that its first milliseconds do not
    // pay for handshakes; answers (refusals included) do not matter here.
    futures::future::join_all((0..WARM_CONNECTIONS).map(|_| target.post())).await;
    let total = (rate * duration_secs).round() as u64;
    let open = Arc::new(Semaphore::new(max_open.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut not_sent = 0u64;
    let started = tokio::time::Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let Ok(slot) = open.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let target = target.clone();
        let due = due.into_std();
        tasks.spawn(async move {
            let _slot = slot;
            send(&target, due).await
        });
    }
    let sending = started.elapsed();
    let (mut ok, mut shed, mut failed) = (Vec::new(), Vec::new(), 0u64);
    while let Some(done) = tasks.join_next().await {
        match done? {
            Outcome::Ok(us) => ok.push(us),
            Outcome::Shed(us) => shed.push(us),
            Outcome::Failed => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    Ok(json!({
        "mode": "open-loop",
        "offered_rps": rate,
        "sent_rps": (total - not_sent) as f64 / sending.as_secs_f64().max(f64::EPSILON),
        "seconds": elapsed.as_secs_f64(),
        "scheduled": total,
        "not_sent": not_sent,
        "ok": ok.len(),
        "ok_rps": ok.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        "shed": shed.len(),
        "errors": failed,
        "latency_ms": summary(&mut ok),
        "shed_latency_ms": summary(&mut shed),
    }))
}

async fn send(target: &BareClient, due: Instant) -> Outcome {
    let status = target.post().await;
    let latency = micros(due.elapsed());
    match status {
        Ok(200) => Outcome::Ok(latency),
        Ok(503 | 429) => Outcome::Shed(latency),
        _ => Outcome::Failed,
    }
}
