//! Harness for the end-to-end tests: configs on loopback with port 0,
//! sample services, and the real agent binaries as child processes.
//!
//! Every wait here is bounded: tests fail with what they saw instead of
//! hanging.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub mod cluster;
pub mod etcd;
pub mod fake_edge;
pub mod haproxy;
pub mod netns;
pub mod skip;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The edge token every test config uses.
pub const TOKEN: &str = "q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd";

/// A cloud config on loopback: tunnel listener `tunnel_listen`, one edge
/// `e1`, and mappings `(name, target)` on ephemeral ports. `extra_tunnel`
/// is added to the `[tunnel]` table.
pub fn cloud_toml(tunnel_listen: &str, mappings: &[(&str, &str)], extra_tunnel: &str) -> String {
    let mut s = format!(
        "shutdown_grace = \"3s\"\n[tunnel]\nlisten = \"{tunnel_listen}\"\n\
         heartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n{extra_tunnel}\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n"
    );
    for (name, target) in mappings {
        s.push_str(&format!(
            "[[mappings]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{target}\"\n"
        ));
    }
    s
}

/// An edge config for `e1` dialling `cloud` and allowing `allow`.
pub fn edge_toml(cloud: SocketAddr, allow: &[String], token: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "cloud_url = \"ws://{cloud}/tunnel\"\nedge_id = \"e1\"\ntoken = \"{token}\"\n\
         allow = [{}]\nconnect_timeout = \"2s\"\nshutdown_grace = \"3s\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n",
        allow.join(", ")
    )
}

/// Parses a cloud config written by [`cloud_toml`].
pub fn cloud_config(toml: &str) -> config::CloudConfig {
    config::CloudConfig::from_toml(toml, std::path::Path::new("e2e-cloud.toml"))
        .unwrap_or_else(|e| panic!("test cloud config invalid: {e}\n{toml}"))
}

/// Parses an edge config written by [`edge_toml`].
pub fn edge_config(toml: &str) -> config::EdgeConfig {
    config::EdgeConfig::from_toml(toml, std::path::Path::new("e2e-edge.toml"))
        .unwrap_or_else(|e| panic!("test edge config invalid: {e}\n{toml}"))
}

/// An echo service on an ephemeral loopback port: writes back what it
/// reads, and half-closes when its peer does. Its accept queue holds 1,024
/// (not tokio's default 128), so waves of hundreds of connects are not held
/// back by the test's own service.
pub async fn echo_server() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind echo");
    let listener = socket.listen(1024).expect("listen");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 service named `name`: answers every request on a
/// connection (keep-alive) with `name HOST`.
pub async fn named_http_service(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut tcp = tokio::io::BufReader::new(tcp);
                loop {
                    let mut host = String::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match tcp.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if let Some(h) = line.strip_prefix("Host: ") {
                            host = h.trim().to_owned();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let body = format!("{name} {host}\n");
                    let answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if tcp.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A loopback port that was free a moment ago (for a service started later).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    l.local_addr().expect("probe addr")
}

/// Sends `payload` through `addr`, half-closes, reads until EOF, and
/// returns what came back.
///
/// # Errors
/// Any I/O error on the way.
pub async fn echo_once(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut r, mut w) = tcp.into_split();
    let read = tokio::spawn(async move {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.map(|_| back)
    });
    w.write_all(payload).await?;
    w.shutdown().await?;
    read.await.map_err(std::io::Error::other)?
}

/// Polls `probe` until it succeeds or `deadline` passes. For conditions
/// that have no event to await (a remote agent becoming ready).
pub async fn eventually<F, Fut>(deadline: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether an echo round trip through `addr` works right now.
pub async fn serves(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), echo_once(addr, b"ping")).await,
        Ok(Ok(ref back)) if back == b"ping"
    )
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Path of a workspace binary, built by `cargo test` next to the test
/// executables (packages with integration tests get their binaries built).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` so the agents' binaries are built",
        path.display()
    );
    path
}

/// A real agent binary running as a child process, its stderr captured.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `bin_name --config <file holding config_text>`.
    pub fn spawn(bin_name: &str, config_text: &str) -> Agent {
        Agent::spawn_wrapped(&[], bin_name, config_text)
    }

    /// Like [`spawn`](Self::spawn), with `wrapper` in front of the command
    /// (e.g. `["ip", "netns", "exec", "ns1"]`; it must exec the agent so
    /// that the child is the agent itself).
    pub fn spawn_wrapped(wrapper: &[&str], bin_name: &str, config_text: &str) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config_text).expect("write config");
        // The configs hold tokens inline: private, as the agents require
        // beyond loopback (the network-namespace tests).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("make config private");
        }
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin(bin_name));
                c
            }
            None => Command::new(bin(bin_name)),
        };
        let mut child = command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", std::env::var("E2E_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent { child, lines, seen: Vec::new(), _dir: dir }
    }

    /// The config file the agent was started with (tests rewrite it to
    /// exercise a reload).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("agent.toml")
    }

    /// Sends the agent SIGHUP (reload its config file).
    pub fn hang_up(&self) {
        let pid = self.child.id().expect("the agent runs");
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {pid} failed");
    }

    /// Waits until a log line contains every one of `needles`, and returns
    /// it. Panics with the log so far if none does within `timeout`.
    pub async fn wait_for_log(&mut self, needles: &[&str], timeout: Duration) -> String {
        let found = tokio::time::timeout(timeout, async {
            if let Some(line) = self.seen.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(line.clone());
            }
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => {
                while let Ok(line) = self.lines.try_recv() {
                    self.seen.push(line);
                }
                panic!(
                    "no log line with {needles:?} within {timeout:?}; log:\n{}",
                    self.seen.join("\n")
                )
            }
        }
    }

    /// Waits until at least `count` log lines contain every one of
    /// `needles`, and returns all such lines so far. Panics with the log so
    /// far if there are fewer within `timeout`.
    pub async fn wait_for_logs(
        &mut self,
        needles: &[&str],
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let hits = |seen: &[String]| -> Vec<String> {
            seen.iter().filter(|l| needles.iter().all(|n| l.contains(n))).cloned().collect()
        };
        let found = tokio::time::timeout(timeout, async {
            loop {
                let found = hits(&self.seen);
                if found.len() >= count {
                    return Some(found);
                }
                let line = self.lines.recv().await?;
                self.seen.push(line);
            }
        })
        .await;
        match found {
            Ok(Some(lines)) => lines,
            _ => {
                let log = self.logged().join("\n");
                panic!(
                    "fewer than {count} log lines with {needles:?} within {timeout:?}; log:\n{log}"
                )
            }
        }
    }

    /// Every log line received so far (without waiting for more).
    pub fn logged(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("agent still running")
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Peak resident memory so far in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Sends a signal (e.g. "KILL", "TERM").
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await.ok()?.ok()?;
        status.code()
    }
}

/// How long an agent may take to log that it is listening or connected.
pub const STARTUP: Duration = Duration::from_secs(10);

/// The socket address after `listen=` in a log line; also accepts the
/// `listen=Some(ADDR)` form the control API logs.
pub fn listen_addr(line: &str) -> SocketAddr {
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no listen= field in {line:?}"));
    let value = value.strip_prefix("Some(").and_then(|v| v.strip_suffix(')')).unwrap_or(value);
    value.parse().unwrap_or_else(|e| panic!("bad listen address {value:?} in {line:?}: {e}"))
}

/// A cloud agent process, with the addresses it bound.
#[derive(Debug)]
pub struct CloudProc {
    /// The process.
    pub agent: Agent,
    /// Where it listens for edge tunnels.
    pub tunnel: SocketAddr,
    /// Where each mapping listens, in the order asked for.
    pub mappings: Vec<SocketAddr>,
}

/// Starts `relay-cloud` with a [`cloud_toml`] config and waits until the
/// tunnel listener and every mapping (in the order given) have logged their
/// addresses.
pub async fn start_cloud(tunnel_listen: &str, mappings: &[(&str, &str)]) -> CloudProc {
    let names: Vec<&str> = mappings.iter().map(|(name, _)| *name).collect();
    start_cloud_with(&cloud_toml(tunnel_listen, mappings, ""), &names).await
}

/// Starts `relay-cloud` with `config_text` and waits until the tunnel
/// listener and the mappings `mapping_names` (in that order) have logged
/// their addresses.
pub async fn start_cloud_with(config_text: &str, mapping_names: &[&str]) -> CloudProc {
    let mut agent = Agent::spawn("relay-cloud", config_text);
    let line = agent.wait_for_log(&["listening for edge tunnels"], STARTUP).await;
    let tunnel = listen_addr(&line);
    let mut addrs = Vec::new();
    for name in mapping_names {
        let field = format!("mapping={name} ");
        let line = agent.wait_for_log(&["mapping listening", &field], STARTUP).await;
        addrs.push(listen_addr(&line));
    }
    CloudProc { agent, tunnel, mappings: addrs }
}

/// The admin token of configs made by [`cloud_toml_with_control`].
pub const ADMIN_TOKEN: &str = "Zr8cLq2VnW5xT0aJ7dKp3HsB9mYe4GfU";

/// [`cloud_toml`] plus a `[control]` section on an ephemeral port with
/// its state file at `state_file`.
pub fn cloud_toml_with_control(
    tunnel_listen: &str,
    mappings: &[(&str, &str)],
    state_file: &std::path::Path,
) -> String {
    let mut s = cloud_toml(tunnel_listen, mappings, "");
    s = s.replacen(
        "[tunnel]",
        &format!(
            "[control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nstate_file = \"{}\"\n\n[tunnel]",
            state_file.display()
        ),
        1,
    );
    s
}

/// A client of the control API, for tests.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    /// A client of the API at `addr` using `token` (or none).
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        Api { base: format!("http://{addr}"), token: token.map(str::to_owned), agent }
    }

    /// Sends a request; returns the status and the body parsed as JSON
    /// (`Null` when empty, a string when not JSON). Panics if the request
    /// cannot be sent at all.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like [`call`](Self::call), but a transport failure (agent down,
    /// connection reset) is an `Err` instead of a panic.
    ///
    /// # Errors
    /// The transport error, as text.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let this = self.clone();
        let method = method.to_owned();
        let url = format!("{}{path}", self.base);
        tokio::task::spawn_blocking(move || {
            let request = ureq::http::Request::builder().method(method.as_str()).uri(&url);
            let request = match &this.token {
                Some(t) => request.header("authorization", format!("Bearer {t}")),
                None => request,
            };
            let result = match body {
                Some(b) => this.agent.run(
                    request
                        .header("content-type", "application/json")
                        .body(b.to_string())
                        .map_err(|e| e.to_string())?,
                ),
                None => this.agent.run(request.body(()).map_err(|e| e.to_string())?),
            };
            let mut response = result.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let json = if text.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
            };
            Ok((status, json))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Parses a `Debug`-formatted `Duration` as agents log it: `1.234567891s`,
/// `850ms`, `12µs`.
pub fn parse_debug_duration(s: &str) -> Duration {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| s.split_at(i))
        .unwrap_or_else(|| panic!("no unit in duration {s:?}"));
    let number: f64 = number.parse().unwrap_or_else(|e| panic!("bad duration {s:?}: {e}"));
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => panic!("unknown unit in duration {s:?}"),
    };
    Duration::from_secs_f64(number * scale)
}

/// The time of day a log line was written, from its leading RFC 3339
/// timestamp (`2026-01-02T13:17:40.688008Z ...`), as time since midnight.
pub fn log_time(line: &str) -> Duration {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split_once('T')
        .and_then(|(_, t)| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no UTC timestamp at the start of {line:?}"));
    let parts: Vec<f64> = time
        .split(':')
        .map(|p| p.parse().unwrap_or_else(|e| panic!("bad timestamp {stamp:?}: {e}")))
        .collect();
    let [h, m, s] = parts[..] else { panic!("bad timestamp {stamp:?}") };
    Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s)
}
