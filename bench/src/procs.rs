//! Child processes: killed when dropped (and reaped by [`reap_dropped`]),
//! stderr captured line by line, and what `/proc` says about them (memory,
//! CPU time).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Lines kept per process; a process that logs more keeps only a count.
const MAX_LINES: usize = 10_000;

/// `sysconf(_SC_CLK_TCK)` on Linux: the unit of utime/stime in /proc.
const CLK_TCK: f64 = 100.0;

#[derive(Debug, Default)]
struct LogState {
    lines: Vec<String>,
    dropped: usize,
}

/// The stderr of a child, as lines.
#[derive(Debug, Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Notify,
}

impl Log {
    fn push(&self, line: String) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.lines.len() < MAX_LINES {
            state.lines.push(line);
        } else {
            state.dropped += 1;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).lines.clone()
    }
}

/// Children killed by a drop (an error or Ctrl-C unwound the run), kept
/// so that [`reap_dropped`] can wait for them.
static DROPPED: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Waits (bounded) for every child killed by a drop, so none is left
/// behind as a zombie when the bench exits.
pub(crate) async fn reap_dropped(timeout: Duration) {
    let children = std::mem::take(&mut *DROPPED.lock().unwrap_or_else(|p| p.into_inner()));
    let _ = tokio::time::timeout(timeout, async {
        for mut child in children {
            let _ = child.wait().await;
        }
    })
    .await;
}

/// A running child process. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    /// Always Some until dropped or stopped.
    child: Option<Child>,
    pid: u32,
    log: Arc<Log>,
}

impl Proc {
    /// Starts `cmd` (stdout and stdin as the caller set them), capturing
    /// its stderr.
    pub(crate) fn spawn(name: &'static str, mut cmd: Command) -> Result<Self> {
        cmd.stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().with_context(|| format!("{name} exited at once"))?;
        let log = Arc::new(Log::default());
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.push(line);
                }
            });
        }
        Ok(Self { name, child: Some(child), pid, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's stdin and stdout, if they were piped.
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().unwrap_or_else(|| unreachable!("child taken only by stop and drop"))
    }

    /// Every stderr line so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Lines logged at WARN or ERROR after the first `skip` lines.
    pub(crate) fn warnings_after(&self, skip: usize) -> Vec<String> {
        let lines = self.lines();
        lines
            .into_iter()
            .skip(skip)
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect()
    }

    /// Waits until `count` stderr lines contain all of `needles`; returns
    /// them. Fails with the log if the process exits or `timeout` passes.
    pub(crate) async fn wait_for(
        &mut self,
        needles: &[&str],
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = Arc::clone(&self.log);
            let changed = log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .collect();
            if found.len() >= count {
                return Ok(found);
            }
            if let Ok(Some(status)) = self.child_mut().try_wait() {
                bail!(
                    "{} exited ({status}) before logging {needles:?}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            // Wake at least every 100 ms to notice an exit.
            let wake = deadline.min(Instant::now() + Duration::from_millis(100));
            let _ = tokio::time::timeout_at(wake, changed).await;
            if Instant::now() >= deadline {
                bail!("{} did not log {needles:?} within {timeout:?}:\n{}", self.name, self.tail());
            }
        }
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn tail(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(30);
        lines[from..].join("\n")
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(None))
    }

    /// Kills the process and reaps it (bounded wait).
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }

    /// Resident memory now (VmRSS), KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        status_kib(self.pid, "VmRSS:")
    }

    /// Peak resident memory since start (VmHWM), KiB.
    pub(crate) fn hwm_kib(&self) -> Result<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    /// User plus system CPU time so far, seconds.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            DROPPED.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        }
    }
}

/// A `Vm*:` field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// utime + stime of /proc/PID/stat (fields 14 and 15), seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces; count fields after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let v: u64 = fields.get(i).context("short stat")?.parse().context("bad stat field")?;
        Ok(v as f64)
    };
    // After ')' the first field is field 3 (state): utime is 14, stime 15.
    Ok((ticks(14 - 3)? + ticks(15 - 3)?) / CLK_TCK)
}

/// A command for one of our binaries, with a clean environment for logs.
pub(crate) fn command(path: &Path) -> Command {
    let mut cmd = Command::new(path);
    cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS:").unwrap() > 0);
        assert!(status_kib(pid, "VmHWM:").unwrap() > 0);
    }

    #[test]
    fn cpu_seconds_grow_while_this_process_computes() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).unwrap();
        // Spin until 0.1 s of CPU show up: a few clock ticks, however busy
        // the machine is. A wrong field (a constant) never gets there.
        let started = std::time::Instant::now();
        let mut x = 1u64;
        let grown = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = cpu_seconds(pid).unwrap();
            if now - before >= 0.1 {
                break now - before;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "cpu_seconds stayed at {now} (from {before}) through 30 s of spinning"
            );
        };
        // Never more CPU than this process could have used since `before`
        // on all of the machine's cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let bound = started.elapsed().as_secs_f64() * cores + 2.0 / CLK_TCK;
        assert!(grown <= bound, "{grown} s of CPU in {:?}", started.elapsed());
    }
}
