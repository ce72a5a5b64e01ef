//! What the server process spent during a run, from /proc: CPU time of all its threads and the
//! time they were runnable but waiting for a CPU (taken by other processes). On a shared machine
//! the second says how much of a latency figure is contention rather than the server.

use anyhow::Context as _;
use serde_json::{Value, json};

/// Nanoseconds on a CPU and waiting for one, summed over the threads of `pid`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sched {
    run_ns: u64,
    wait_ns: u64,
}

/// Reads `/proc/<pid>/task/*/schedstat`.
pub fn sample(pid: u32) -> anyhow::Result<Sched> {
    let mut total = Sched::default();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading /proc/{pid}/task"))?;
    for task in tasks.flatten() {
        // A thread may end between the listing and the read.
        let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = line
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        total.run_ns += fields.next().unwrap_or(0);
        total.wait_ns += fields.next().unwrap_or(0);
    }
    Ok(total)
}

/// The difference between two samples, per request answered.
pub fn report(before: Sched, after: Sched, requests: usize) -> Value {
    let run = after.run_ns.saturating_sub(before.run_ns);
    let wait = after.wait_ns.saturating_sub(before.wait_ns);
    json!({
        "cpu_ms": run as f64 / 1e6,
        "cpu_us_per_request": run as f64 / 1e3 / requests.max(1) as f64,
        "runqueue_wait_ms": wait as f64 / 1e6,
    })
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}
