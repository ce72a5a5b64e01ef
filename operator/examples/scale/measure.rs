//! CPU time of the calling thread, the process's resident memory, and summaries.

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// CPU time the calling thread has used (user and system), in nanoseconds' resolution.
pub fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or_default(),
        u32::try_from(t.tv_nsec).unwrap_or_default(),
    )
}

/// The process's resident memory in KiB, from `/proc/self/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: everything resident.
    pub rss: u64,
    /// `VmHWM`: the most that was ever resident.
    pub peak: u64,
    /// `RssAnon`: heap and stacks.
    pub anon: u64,
    /// `RssFile`: pages of the executable and libraries.
    pub file: u64,
}

/// This process's [`Memory`] now.
pub fn memory_kib() -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/self/status"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// Mean, median, 99th percentile and maximum of `samples` (microseconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((us.len() - 1) as f64 * q).round() as usize;
            us[i.min(us.len() - 1)]
        };
        Self {
            mean: us.iter().sum::<f64>() / us.len() as f64,
            p50: at(0.5),
            p99: at(0.99),
            max: us[us.len() - 1],
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:>8.1}  p50 {:>8.1}  p99 {:>8.1}  max {:>8.1}",
            self.mean, self.p50, self.p99, self.max
        )
    }
}
