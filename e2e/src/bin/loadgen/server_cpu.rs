//! What the server process spent during a run, from /proc: CPU time of all its threads and the
//! time they were runnable but waiting for a CPU (taken by other processes). On a shared machine
//! the second says how much of a latency figure is contention rather than the server. On a VM,
//! each CPU's steal time (`/proc/stat`) says how long the host ran something else on it.

use anyhow::Context as _;
use serde_json::{Value, json};

/// Nanoseconds on a CPU and waiting for one, summed over the threads of `pid`, and the
/// machine's steal time per CPU at the same moment.
#[derive(Debug, Clone, Default)]
pub struct Sched {
    run_ns: u64,
    wait_ns: u64,
    /// Steal time of each CPU, in clock ticks.
    steal_ticks: Vec<u64>,
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The steal column of each `cpuN` line of `/proc/stat` (empty where there is none).
fn steal_ticks() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            // cpuN user nice system idle iowait irq softirq steal ...
            l.split_whitespace()
                .nth(8)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Reads `/proc/<pid>/task/*/schedstat`.
pub fn sample(pid: u32) -> anyhow::Result<Sched> {
    let mut total = Sched {
        steal_ticks: steal_ticks(),
        ..Sched::default()
    };
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
pub fn report(before: &Sched, after: &Sched, requests: usize) -> Value {
    let run = after.run_ns.saturating_sub(before.run_ns);
    let wait = after.wait_ns.saturating_sub(before.wait_ns);
    let steal_ms: Vec<f64> = after
        .steal_ticks
        .iter()
        .zip(&before.steal_ticks)
        .map(|(a, b)| a.saturating_sub(*b) as f64 * 1000.0 / TICKS_PER_SECOND)
        .collect();
    json!({
        "cpu_ms": run as f64 / 1e6,
        "cpu_us_per_request": run as f64 / 1e3 / requests.max(1) as f64,
        "runqueue_wait_ms": wait as f64 / 1e6,
        "steal_ms_per_cpu": steal_ms,
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
