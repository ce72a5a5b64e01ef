//! Open loop: requests start on a fixed schedule, whatever the answers, so that a server past
//! its capacity has to shed (or queue) the excess. Latency runs from the scheduled start, so a
//! late start (the client's own backlog) counts against the server rather than hiding. Requests
//! go through [`BareClient`], the load generator's cheapest way to send them.
//!
//! The schedule is kept by a pacer thread, not by Tokio's timers: those fire on millisecond
//! ticks, so at 30,000 requests a second they released thirty requests at once every
//! millisecond, each up to a millisecond after it was due, and that lateness, the client's own,
//! was counted against the server. The pacer sleeps on the kernel's high-resolution timer and
//! releases what is due at most every `pace` (`--pace-us`): each release wakes the client, on a
//! core it shares with the mock. How late requests really started is reported
//! (`start_lateness_ms`), so the client's share of every figure is in the output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::bare_http::BareClient;
use super::{micros, summary};

/// Most requests one run schedules: two samples of eight bytes are kept for each.
const MAX_SCHEDULED: u64 = 10_000_000;

/// How one request ended.
enum Outcome {
    Ok(u64),
    /// 503 or 429: shed or refused by a limit, with its latency.
    Shed(u64),
    Failed,
}

/// The schedule: `rate` requests per second for `duration_secs`, released at most every
/// `pace`.
pub struct Schedule {
    /// Requests started per second.
    pub rate: f64,
    /// How long to send.
    pub duration_secs: f64,
    /// The shortest time between two releases of due requests.
    pub pace: Duration,
    /// Connections opened (one request each) before the schedule starts: about as many as
    /// will be open at once, so that the run does not measure handshakes.
    pub warm_connections: usize,
}

/// Sends the schedule's requests; at most `max_open` open at once.
pub async fn run(
    target: &Arc<BareClient>,
    schedule: &Schedule,
    max_open: usize,
) -> anyhow::Result<Value> {
    let Schedule {
        rate,
        duration_secs,
        pace,
        warm_connections,
    } = *schedule;
    if !(rate > 0.0 && duration_secs > 0.0) {
        bail!("--rate and --duration-secs must be positive");
    }
    // Every request's outcome is kept (exact percentiles), so a schedule must fit in memory.
    if rate * duration_secs > MAX_SCHEDULED as f64 {
        bail!("--rate times --duration-secs schedules more than {MAX_SCHEDULED} requests");
    }
    // Connections opened before the schedule starts, so that its first milliseconds do not
    // pay for handshakes. Refusals do not matter here; answered ones are reported, as each
    // left its usage record.
    let warm_ok = futures::future::join_all((0..warm_connections).map(|_| target.post()))
        .await
        .into_iter()
        .filter(|status| matches!(status, Ok(200)))
        .count();
    let total = (rate * duration_secs).round() as u64;
    let open = Arc::new(Semaphore::new(max_open.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut not_sent = 0u64;
    let mut lateness = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let started = Instant::now();
    let due_at = move |i: u64| started + Duration::from_secs_f64(i as f64 / rate);
    let mut released = start_pacer(total, pace, due_at)?;
    let mut next = 0u64;
    while let Some(upto) = released.recv().await {
        for i in next..upto {
            let due = due_at(i);
            let Ok(slot) = open.clone().try_acquire_owned() else {
                not_sent += 1;
                continue;
            };
            let target = target.clone();
            tasks.spawn(async move {
                let _slot = slot;
                let late = micros(due.elapsed());
                (late, send(&target, due).await)
            });
        }
        next = upto;
    }
    if next < total {
        bail!("the pacer stopped after {next} of {total} requests");
    }
    let sending = started.elapsed();
    let (mut ok, mut shed, mut failed) = (Vec::new(), Vec::new(), 0u64);
    while let Some(done) = tasks.join_next().await {
        let (late, outcome) = done?;
        lateness.push(late);
        match outcome {
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
        "warmup_ok": warm_ok,
        "ok_rps": ok.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        "shed": shed.len(),
        "errors": failed,
        "latency_ms": summary(&mut ok),
        "shed_latency_ms": summary(&mut shed),
        "start_lateness_ms": summary(&mut lateness),
        "pace_us": micros(pace),
    }))
}

/// Starts the pacer: a thread that sleeps until the next request is due, and at least `pace`
/// after its last release, then sends how many of the `total` are due by then. A thread of its
/// own cost the client less CPU per request than a kernel timer watched by the event loop
/// (docs/benchmarks.md, the sixth VM's run).
fn start_pacer(
    total: u64,
    pace: Duration,
    due_at: impl Fn(u64) -> Instant + Send + 'static,
) -> std::io::Result<mpsc::UnboundedReceiver<u64>> {
    let (release, released) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("loadgen-pacer".to_owned())
        .spawn(move || {
            let mut due = 0u64;
            let mut last_release: Option<Instant> = None;
            while due < total {
                let mut wake = due_at(due);
                if let Some(last) = last_release {
                    wake = wake.max(last + pace);
                }
                let now = Instant::now();
                if wake > now {
                    std::thread::sleep(wake - now);
                }
                // Request `due` is due by now: `wake` was not before it.
                let now = Instant::now();
                last_release = Some(now);
                while due < total && due_at(due) <= now {
                    due += 1;
                }
                if release.send(due).is_err() {
                    // The run has ended (an error): nobody waits for the rest.
                    return;
                }
            }
        })?;
    Ok(released)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_releases_each_request_when_due_and_not_before() {
        let started = Instant::now();
        let due_at = move |i: u64| started + Duration::from_micros(i * 400);
        let mut released = start_pacer(20, Duration::from_micros(250), due_at).expect("pacer");
        let mut last = 0;
        while let Some(upto) = released.recv().await {
            assert!(upto > last, "a release of nothing: {last} then {upto}");
            assert!(
                Instant::now() >= due_at(upto - 1),
                "request {} released before it was due",
                upto - 1
            );
            last = upto;
        }
        assert_eq!(last, 20, "the pacer stopped early");
    }

    #[tokio::test]
    async fn the_pacer_releases_no_more_often_than_its_pace() {
        // Due every 50 µs, released at most every 2 ms: each release carries several.
        let pace = Duration::from_millis(2);
        let started = Instant::now();
        let due_at = move |i: u64| started + Duration::from_micros(i * 50);
        let mut released = start_pacer(200, pace, due_at).expect("pacer");
        let mut releases = Vec::new();
        while let Some(upto) = released.recv().await {
            releases.push(upto);
        }
        assert_eq!(releases.last().copied(), Some(200));
        // 10 ms of schedule at one release per 2 ms at most: six releases at most.
        assert!(releases.len() <= 6, "{} releases", releases.len());
    }

    #[tokio::test]
    async fn a_schedule_is_sent_whole_and_each_start_is_timed() {
        // A server that answers every request with 200 at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                axum::Router::new().route(
                    "/v1/chat/completions",
                    axum::routing::post(|| async { "{}" }),
                ),
            )
            .await
        });
        let target = Arc::new(
            BareClient::new(
                &format!("http://{addr}/v1/chat/completions"),
                None,
                b"{}".to_vec(),
            )
            .expect("client"),
        );
        let schedule = Schedule {
            rate: 2_000.0,
            duration_secs: 0.25,
            pace: Duration::from_micros(250),
            warm_connections: 3,
        };
        let report = run(&target, &schedule, 64).await.expect("run");
        assert_eq!(report["scheduled"], 500);
        // The warm-up requests were answered and counted apart from the schedule's.
        assert_eq!(report["warmup_ok"], 3);
        assert_eq!(
            report["ok"].as_u64().unwrap() + report["not_sent"].as_u64().unwrap(),
            500
        );
        assert_eq!(report["errors"], 0);
        assert_eq!(report["pace_us"], 250);
        // Sending 500 requests over a quarter of a second takes at least that long: the schedule
        // was kept, not sent in one burst.
        assert!(report["seconds"].as_f64().unwrap() >= 0.249, "{report}");
        assert!(
            report["start_lateness_ms"]["p50"].as_f64().is_some(),
            "{report}"
        );
    }
}
