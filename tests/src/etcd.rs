//! Real etcd on loopback, for the cluster tests: one member or a cluster
//! of several, each a child process with its own temporary data dir, and
//! `etcdctl` helpers to inspect and tamper with what is stored.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e_tests::etcd::EtcdCluster;
//! let Some(mut etcd) = EtcdCluster::start("my_test", 3).await else { return };
//! let endpoints = etcd.endpoints(); // ["http://127.0.0.1:P1", ...]: give them to the nodes
//! etcd.put("/relay/x", "1").await;
//! etcd.kill(1).await; // waits for a leader among the two left
//! etcd.kill(2).await; // quorum lost: writes fail
//! assert!(etcd.try_put("/relay/x", "2").await.is_err());
//! etcd.restart(1).await;
//! etcd.restart(2).await; // quorum back; restart waits until the members are healthy
//! let rev = etcd.compact_to_latest().await; // watches from older revisions now fail
//! # let _ = (endpoints, rev);
//! # }
//! ```
//!
//! Needs `etcd` (Debian package etcd-server, 3.4) and `etcdctl`
//! (etcd-client). Without them [`EtcdCluster::start`] returns `None` after
//! [`cannot_run`](crate::skip::cannot_run): under `CI=true` that fails the
//! test, elsewhere it prints `SKIPPED` and the test returns.
//!
//! Helpers that expect success ([`put`](EtcdCluster::put),
//! [`get`](EtcdCluster::get), [`etcdctl`](EtcdCluster::etcdctl), ...) retry
//! while etcd is electing a leader and then panic; `try_*` helpers make one
//! attempt and return the error (for "this write must fail"). They talk to
//! the members that are running.
//!
//! Ports are chosen free (etcd cannot bind port 0) and kept across a
//! member's kill and restart; in the small window between, another process
//! could take one, and the restart then fails with etcd's "address already
//! in use".
//!
//! Every wait is bounded and fails with the tail of etcd's log. Dropping the
//! cluster kills (SIGKILL) and reaps every member, then removes the data
//! dirs: nothing is left behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a member (or the whole cluster) may take to become healthy.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(20);
/// etcdctl's `--command-timeout`: a request without quorum fails after this.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The most log lines kept per member, for failure messages.
const LOG_TAIL: usize = 60;
/// Attempts at starting a new cluster when a port was taken meanwhile.
const START_ATTEMPTS: usize = 4;

/// The same cluster type, for `Etcd::single(test)`.
pub type Etcd = EtcdCluster;

/// A running etcd cluster of one or more members on 127.0.0.1. Members are
/// numbered from 0; a killed member keeps its ports and data dir, so
/// [`restart`](Self::restart) brings it back as the same member.
#[derive(Debug)]
pub struct EtcdCluster {
    // Drop order: members (killed and reaped in Member::drop) before the dir.
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// A failed `etcdctl` run: the command and what it printed.
#[derive(Debug, Clone)]
pub struct EtcdctlError {
    /// The arguments after the global flags.
    pub args: Vec<String>,
    /// stderr and stdout, or why it did not run or finish.
    pub output: String,
}

impl std::fmt::Display for EtcdctlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcdctl {}: {}", self.args.join(" "), self.output.trim())
    }
}

impl std::error::Error for EtcdctlError {}

/// Why etcd cannot run here, if it cannot: a tool missing.
fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = [("etcd", "--version"), ("etcdctl", "version")]
        .into_iter()
        .filter(|(tool, version)| {
            Command::new(tool)
                .arg(version)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .map(|(tool, _)| tool)
        .collect();
    (!missing.is_empty()).then(|| {
        format!("{} not found: apt-get install etcd-server etcd-client", missing.join(" and "))
    })
}

impl EtcdCluster {
    /// One member. See [`start`](Self::start).
    pub async fn single(test: &str) -> Option<EtcdCluster> {
        EtcdCluster::start(test, 1).await
    }

    /// Starts a cluster of `members` members (1 or 3, usually) on free
    /// loopback ports, with heartbeat 100 ms and election timeout 1 s,
    /// and waits until every member names the same leader (etcdctl
    /// `endpoint status`).
    ///
    /// Returns `None` when etcd or etcdctl is missing (after
    /// [`cannot_run`](crate::skip::cannot_run), which panics under CI).
    /// Panics, with etcd's log, if the cluster is not healthy within
    /// [`HEALTHY_WITHIN`]. A port taken between choosing and binding it
    /// makes a fresh attempt on new ports.
    pub async fn start(test: &str, members: usize) -> Option<EtcdCluster> {
        assert!(members >= 1, "an etcd cluster needs a member");
        if let Some(why) = missing_tools() {
            crate::skip::cannot_run(test, &why);
            return None;
        }
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut cluster = EtcdCluster::create(members);
            for i in 0..members {
                cluster.spawn(i, "new");
            }
            match cluster.wait_healthy(&(0..members).collect::<Vec<_>>()).await {
                Ok(()) => return Some(cluster),
                Err(why) if why.contains("address already in use") => last = why,
                Err(why) => panic!("etcd cluster of {members} did not start: {why}"),
            }
        }
        panic!("etcd cluster of {members} did not start after {START_ATTEMPTS} attempts: {last}")
    }

    fn create(members: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let mut taken = Vec::new();
        let members = (0..members)
            .map(|i| {
                let client = distinct_free_port(&mut taken);
                let peer = distinct_free_port(&mut taken);
                Member {
                    name: format!("m{i}"),
                    client,
                    peer,
                    // Not created here: etcd makes it with the 0700 mode it insists on.
                    data_dir: dir.path().join(format!("m{i}.etcd")),
                    child: None,
                    log: Arc::default(),
                }
            })
            .collect();
        EtcdCluster { members, dir }
    }

    /// Spawns member `i` (`state` "new" for a first start; ignored by etcd
    /// once the data dir exists).
    fn spawn(&mut self, i: usize, state: &str) {
        let initial_cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let token = format!("e2e-{}", self.dir.path().display());
        let m = &mut self.members[i];
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let mut child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            .args(["--initial-cluster-state", state, "--initial-cluster-token", &token])
            // Loopback: fast elections, so quorum tests take seconds; not faster,
            // so a busy machine's pauses do not trigger needless elections.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcd");
        let stderr = child.stderr.take().expect("etcd stderr");
        let log = Arc::clone(&m.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().expect("etcd log");
                if log.len() == LOG_TAIL {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        m.child = Some(child);
    }

    /// Waits until each of `members` is running and they all see the same
    /// leader, one of them (etcdctl `endpoint status`). Err (with the logs)
    /// when one exits or time runs out.
    async fn wait_healthy(&mut self, members: &[usize]) -> Result<(), String> {
        let until = tokio::time::Instant::now() + HEALTHY_WITHIN;
        loop {
            for &i in members {
                if let Some(exited) = self.members[i].exited() {
                    return Err(self.exited_message(i, &exited).await);
                }
            }
            let seen = match self.agreed_leader(members).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "members {members:?} not agreed on a leader within {HEALTHY_WITHIN:?}: \
                     {seen}\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ok when every one of `members` answers `endpoint status` naming the
    /// same leader, and that leader is one of them.
    async fn agreed_leader(&self, members: &[usize]) -> Result<(), String> {
        let endpoints: Vec<String> =
            members.iter().map(|&i| format!("http://{}", self.members[i].client)).collect();
        let out = run_etcdctl(&endpoints, &["endpoint", "status", "-w", "json"], COMMAND_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let statuses = json.as_array().map(Vec::as_slice).unwrap_or_default();
        let ids: Vec<u64> =
            statuses.iter().filter_map(|s| s["Status"]["header"]["member_id"].as_u64()).collect();
        let leaders: Vec<u64> =
            statuses.iter().filter_map(|s| s["Status"]["leader"].as_u64()).collect();
        let agreed = ids.len() == members.len()
            && leaders.len() == members.len()
            && leaders.iter().all(|l| *l == leaders[0] && ids.contains(l));
        if agreed { Ok(()) } else { Err(format!("members {ids:?} see leaders {leaders:?}")) }
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: [`start`](Self::start)
    /// needs one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, `http://127.0.0.1:PORT`, running or not,
    /// in member order: what a node's config lists.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}", m.client)).collect()
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// Whether member `i` is running (not killed, not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].child.is_some() && self.members[i].exited().is_none()
    }

    /// Kills member `i` with SIGKILL and reaps it (no-op if not running).
    /// Its data dir and ports stay, for [`restart`](Self::restart). When a
    /// quorum is left, waits until the running members agree on a leader
    /// among them (a new one if `i` led), so the next write is served;
    /// without quorum it returns at once. Panics, with the log, if no
    /// leader emerges within [`HEALTHY_WITHIN`].
    pub async fn kill(&mut self, i: usize) {
        self.members[i].kill();
        let running: Vec<usize> = (0..self.len()).filter(|&j| self.is_running(j)).collect();
        if running.len() > self.len() / 2 {
            if let Err(why) = self.wait_healthy(&running).await {
                panic!("etcd elected no leader after member {i} was killed: {why}");
            }
        }
    }

    /// Kills member `i` and returns at once, without waiting for a new
    /// leader (to test what happens during the election).
    pub fn kill_now(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts member `i` again (after [`kill`](Self::kill)) with its data
    /// dir and ports. When a quorum of members is then running, waits until
    /// all running members are healthy; otherwise (quorum still lost) only
    /// until member `i` answers HTTP. Panics with the log on failure.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.is_running(i), "etcd member {i} is already running");
        self.spawn(i, "existing");
        self.wait_after_start(i).await;
    }

    /// Starts every member that is not running, then waits until all are
    /// healthy.
    pub async fn restart_all(&mut self) {
        for i in 0..self.len() {
            if !self.is_running(i) {
                self.spawn(i, "existing");
            }
        }
        let all: Vec<usize> = (0..self.len()).collect();
        if let Err(why) = self.wait_healthy(&all).await {
            panic!("etcd did not come back: {why}");
        }
    }

    async fn wait_after_start(&mut self, i: usize) {
        let running: Vec<usize> = (0..self.len()).filter(|&j| self.is_running(j)).collect();
        let result = if running.len() > self.len() / 2 {
            self.wait_healthy(&running).await
        } else {
            let client = self.members[i].client;
            let until = tokio::time::Instant::now() + HEALTHY_WITHIN;
            loop {
                if let Some(exited) = self.members[i].exited() {
                    break Err(self.exited_message(i, &exited).await);
                }
                if answers_http(client).await {
                    break Ok(());
                }
                if tokio::time::Instant::now() >= until {
                    break Err(format!("member {i} not answering\n{}", self.logs()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if let Err(why) = result {
            panic!("etcd member {i} did not start again: {why}");
        }
    }

    /// Why member `i` is gone, with the logs once its last lines are read.
    async fn exited_message(&self, i: usize, exited: &str) -> String {
        // The reader thread sees EOF just after the exit; give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        format!("member {i} exited ({exited})\n{}", self.logs())
    }

    /// The last lines each member logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!("--- etcd {} (client {}):\n", m.name, m.client));
            for line in m.log.lock().expect("etcd log").iter() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Runs `etcdctl ARGS` (API 3) against the running members, with
    /// [`COMMAND_TIMEOUT`] per request and `limit` for the whole run (for
    /// commands that wait, such as `watch`), and returns its stdout.
    ///
    /// # Errors
    /// A non-zero exit (with what etcdctl printed), or `limit` passing.
    pub async fn try_etcdctl_within(
        &self,
        args: &[&str],
        limit: Duration,
    ) -> Result<String, EtcdctlError> {
        let mut endpoints: Vec<String> = Vec::new();
        for m in &self.members {
            if m.child.is_some() {
                endpoints.push(format!("http://{}", m.client));
            }
        }
        if endpoints.is_empty() {
            // Every member down: still ask, so the caller sees etcdctl fail.
            endpoints = self.endpoints();
        }
        run_etcdctl(&endpoints, args, limit).await
    }

    /// [`try_etcdctl_within`](Self::try_etcdctl_within) with a 10 s limit.
    ///
    /// # Errors
    /// As there.
    pub async fn try_etcdctl(&self, args: &[&str]) -> Result<String, EtcdctlError> {
        self.try_etcdctl_within(args, Duration::from_secs(10)).await
    }

    /// Runs etcdctl, retrying for up to [`HEALTHY_WITHIN`] while etcd
    /// answers that it has no leader or timed out (an election under way:
    /// a retried write may then apply twice), and panics, with etcd's log,
    /// if it still fails. For commands the test expects to work; use
    /// [`try_etcdctl`](Self::try_etcdctl) for one that may fail.
    pub async fn etcdctl(&self, args: &[&str]) -> String {
        let until = tokio::time::Instant::now() + HEALTHY_WITHIN;
        loop {
            match self.try_etcdctl(args).await {
                Ok(out) => return out,
                Err(e) if is_transient(&e) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}\n{}", self.logs()),
            }
        }
    }

    /// Writes `key` = `value`.
    ///
    /// # Errors
    /// etcdctl's failure (e.g. no quorum within [`COMMAND_TIMEOUT`]).
    pub async fn try_put(&self, key: &str, value: &str) -> Result<(), EtcdctlError> {
        // `--` so that keys and values may start with '-'.
        self.try_etcdctl(&["put", "--", key, value]).await.map(drop)
    }

    /// Writes `key` = `value`; panics if it fails (after the retries of
    /// [`etcdctl`](Self::etcdctl)).
    pub async fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--", key, value]).await;
    }

    /// The value of `key`, if any; panics if etcdctl fails.
    pub async fn get(&self, key: &str) -> Option<String> {
        let (_, kvs) = self.range(&["get", "-w", "json", "--", key]).await;
        kvs.into_iter().next().map(|(_, v)| v)
    }

    /// Every key under `prefix` with its value, in key order; panics if
    /// etcdctl fails. Values that are not UTF-8 are converted lossily.
    pub async fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.range(&["get", "--prefix", "-w", "json", "--", prefix]).await.1
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1). Panics
    /// if etcdctl fails.
    pub async fn del(&self, key: &str) -> u64 {
        let out = self.etcdctl(&["del", "--", key]).await;
        out.trim().parse().unwrap_or_else(|e| panic!("etcdctl del printed {out:?}: {e}"))
    }

    /// Deletes every key under `prefix`; returns how many.
    pub async fn del_prefix(&self, prefix: &str) -> u64 {
        let out = self.etcdctl(&["del", "--prefix", "--", prefix]).await;
        out.trim().parse().unwrap_or_else(|e| panic!("etcdctl del printed {out:?}: {e}"))
    }

    /// The store's current revision.
    pub async fn revision(&self) -> i64 {
        // Any range answers with the header; a key nobody uses keeps it small.
        self.range(&["get", "-w", "json", "--", "/e2e-harness/revision-probe"]).await.0
    }

    /// Compacts the store to its current revision (physically: the old
    /// revisions are gone when this returns) and returns that revision. A
    /// watch from an older revision then fails with "required revision has
    /// been compacted".
    pub async fn compact_to_latest(&self) -> i64 {
        let rev = self.revision().await;
        self.etcdctl(&["compact", &rev.to_string(), "--physical"]).await;
        rev
    }

    /// Runs a `get -w json` and returns the header revision and the pairs.
    async fn range(&self, args: &[&str]) -> (i64, Vec<(String, String)>) {
        let out = self.etcdctl(args).await;
        let json: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} printed no JSON ({e}): {out}"));
        let revision = json["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no header revision in {out}"));
        let decode = |field: &serde_json::Value| -> String {
            let text = field.as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_else(|e| panic!("etcdctl printed bad base64 {text:?}: {e}"));
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let kvs = json["kvs"].as_array().map(Vec::as_slice).unwrap_or_default();
        let pairs = kvs.iter().map(|kv| (decode(&kv["key"]), decode(&kv["value"]))).collect();
        (revision, pairs)
    }
}

impl Member {
    /// How the process ended, if it has (reaping it).
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait: {e}")),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port not in `taken` (etcd cannot listen on port 0, so
/// the port is chosen here and released for etcd to bind).
fn distinct_free_port(taken: &mut Vec<SocketAddr>) -> SocketAddr {
    loop {
        let addr = crate::free_port();
        if !taken.contains(&addr) {
            taken.push(addr);
            return addr;
        }
    }
}

/// Whether an etcdctl failure is etcd electing a leader (worth a retry).
fn is_transient(e: &EtcdctlError) -> bool {
    ["request timed out", "leader changed", "no leader", "Unavailable", "deadline exceeded"]
        .iter()
        .any(|m| e.output.contains(m))
}

/// Whether etcd answers `GET /health` at `addr` within a second (healthy
/// or not: without quorum it answers 503).
async fn answers_http(addr: SocketAddr) -> bool {
    let ask = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tcp.take(64 * 1024).read_to_end(&mut response).await.ok()?;
        Some(response.starts_with(b"HTTP/"))
    };
    tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten().unwrap_or(false)
}

/// Runs `etcdctl ARGS` (API 3) against `endpoints` with [`COMMAND_TIMEOUT`]
/// per request and `limit` for the whole run; returns stdout.
async fn run_etcdctl(
    endpoints: &[String],
    args: &[&str],
    limit: Duration,
) -> Result<String, EtcdctlError> {
    let err = |output: String| EtcdctlError {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        output,
    };
    let child = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--command-timeout={}s", COMMAND_TIMEOUT.as_secs()))
        .arg("--dial-timeout=2s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot run etcdctl: {e}")))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| err(format!("did not finish within {limit:?}")))?
        .map_err(|e| err(format!("etcdctl: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(err(format!("{}: {stderr}{stdout}", out.status)))
    }
}
