//! How much of the machine something other than the bench used while it
//! ran: the machine's busy CPU time (/proc/stat) minus the bench's own and
//! its reaped children's (/proc/self/stat utime, stime, cutime, cstime).
//! On a shared 2-core machine this says whether the figures were disturbed.

use serde::Serialize;
use tokio::time::Instant;

/// USER_HZ: the unit of /proc/stat and /proc/PID/stat times.
const CLK_TCK: f64 = 100.0;

/// Readings at the start of the run.
#[derive(Debug)]
pub(crate) struct CpuAccount {
    started: Instant,
    machine: Option<Times>,
    ours: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    busy: f64,
    steal: f64,
}

/// CPU seconds over the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Load {
    pub(crate) wall_secs: f64,
    /// Busy CPU time of the whole machine (all cores), without steal.
    pub(crate) machine_busy_secs: f64,
    /// relay-bench, its targets process and the agents it started.
    pub(crate) bench_secs: f64,
    /// Everything else that ran meanwhile.
    pub(crate) other_secs: f64,
    /// Time the hypervisor gave to someone else.
    pub(crate) steal_secs: f64,
    /// `other_secs` as a share of all cores over the run.
    pub(crate) other_share: f64,
}

impl CpuAccount {
    pub(crate) fn start() -> Self {
        Self { started: Instant::now(), machine: machine_times(), ours: own_and_children() }
    }

    /// Call after every child has been stopped and reaped.
    pub(crate) fn finish(&self) -> Option<Load> {
        let wall_secs = self.started.elapsed().as_secs_f64();
        let (m0, m1) = (self.machine?, machine_times()?);
        let bench_secs = own_and_children()? - self.ours?;
        let machine_busy_secs = m1.busy - m0.busy;
        let other_secs = (machine_busy_secs - bench_secs).max(0.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Some(Load {
            wall_secs,
            machine_busy_secs,
            bench_secs,
            other_secs,
            steal_secs: m1.steal - m0.steal,
            other_share: other_secs / (wall_secs * cores),
        })
    }
}

/// The `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal.
fn machine_times() -> Option<Times> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    Some(Times { busy: busy / CLK_TCK, steal: get(7) / CLK_TCK })
}

/// utime + stime + cutime + cstime of this process (fields 14 to 17).
fn own_and_children() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut sum = 0.0;
    for field in 14..=17 {
        let ticks: f64 = fields.get(field - 3)?.parse().ok()?;
        sum += ticks;
    }
    Some(sum / CLK_TCK)
}
