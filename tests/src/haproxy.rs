//! Real HAProxy on loopback, for the cluster tests: an L4 (`mode tcp`)
//! load balancer in front of several nodes, with HTTP health checks on
//! each node's control API (`GET /ready` by default) and optionally the
//! PROXY protocol towards the nodes.
//!
//! ```no_run
//! # async fn demo(node_a: std::net::SocketAddr, api_a: std::net::SocketAddr,
//! #               node_b: std::net::SocketAddr, api_b: std::net::SocketAddr) {
//! use std::time::Duration;
//! use e2e_tests::haproxy::{Frontend, Haproxy, HaproxyConfig, SendProxy, Server};
//! let config = HaproxyConfig::new(vec![Frontend::new("web", vec![
//!     Server::new("a", node_a, api_a).send_proxy(SendProxy::V2),
//!     Server::new("b", node_b, api_b),
//! ])]);
//! let Some(lb) = Haproxy::start("my_test", config).await else { return };
//! let public = lb.frontend_addr("web"); // clients connect here
//! lb.wait_server_state("web", "a", "UP", Duration::from_secs(5)).await;
//! # let _ = public;
//! # }
//! ```
//!
//! Each [`Frontend`] becomes one `listen` section: a `bind` on a free
//! 127.0.0.1 port and its servers, so the backend has the frontend's name.
//! HAProxy runs in the foreground (`haproxy -f CFG -db`) with an admin stats
//! socket in its temporary dir, which [`Haproxy::server_states`] reads. It
//! is killed (SIGKILL) and reaped on drop.
//!
//! Needs `haproxy` (Debian package haproxy, 2.6). Without it
//! [`Haproxy::start`] returns `None` after
//! [`cannot_run`](crate::skip::cannot_run): under `CI=true` that fails the
//! test, elsewhere it prints `SKIPPED` and the test returns.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long HAProxy may take to bind and answer on its stats socket.
pub const STARTED_WITHIN: Duration = Duration::from_secs(10);
/// The most log lines kept, for failure messages.
const LOG_TAIL: usize = 100;
/// Attempts at starting when a chosen port was taken meanwhile.
const START_ATTEMPTS: usize = 4;

/// What HAProxy sends a server before the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendProxy {
    /// Nothing: the server sees HAProxy's address.
    #[default]
    None,
    /// A PROXY protocol v1 (text) header (`send-proxy`).
    V1,
    /// A PROXY protocol v2 (binary) header (`send-proxy-v2`).
    V2,
}

/// One server (a node) behind a frontend.
#[derive(Debug, Clone)]
pub struct Server {
    /// The server's name in HAProxy (`show stat`'s `svname`).
    pub name: String,
    /// Where client connections go (the node's mapping listener).
    pub addr: SocketAddr,
    /// Where the health check goes (the node's control API).
    pub check_addr: SocketAddr,
    /// The PROXY protocol header sent on client connections (never on
    /// checks: HAProxy sends none to a separate check address).
    pub send_proxy: SendProxy,
}

impl Server {
    /// A server `name` at `addr`, checked at `check_addr`, without PROXY
    /// protocol.
    pub fn new(name: &str, addr: SocketAddr, check_addr: SocketAddr) -> Server {
        Server { name: name.to_owned(), addr, check_addr, send_proxy: SendProxy::None }
    }

    /// The same server, sending `header` on client connections.
    pub fn send_proxy(mut self, header: SendProxy) -> Server {
        self.send_proxy = header;
        self
    }
}

/// One public listener and its servers (an HAProxy `listen` section; the
/// backend has the same name).
#[derive(Debug, Clone)]
pub struct Frontend {
    /// The section's name: [`Haproxy::frontend_addr`]'s and
    /// [`Haproxy::server_states`]'s argument.
    pub name: String,
    /// The servers, balanced by [`HaproxyConfig::balance`].
    pub servers: Vec<Server>,
    /// Not a load balancer but a destination: `accept-proxy` on its bind,
    /// and every HTTP request answered by HAProxy itself with what the
    /// PROXY header said (see [`Frontend::proxy_reporter`]).
    pub reports_proxy_header: bool,
    /// With `reports_proxy_header`: terminate TLS with this PEM (the
    /// certificate, then its key) after the PROXY header.
    pub tls_pem: Option<PathBuf>,
}

impl Frontend {
    /// A frontend `name` balancing over `servers`.
    pub fn new(name: &str, servers: Vec<Server>) -> Frontend {
        Frontend { name: name.to_owned(), servers, reports_proxy_header: false, tls_pem: None }
    }

    /// A service that requires a PROXY header (v1 or v2, as HAProxy's
    /// `accept-proxy` takes either) and answers each HTTP request with
    /// `200` and one line parsed by HAProxy, not by this project:
    /// `src=IP:PORT dst=IP:PORT authority=NAME` (source and destination
    /// as the header gave them; the v2 authority TLV, empty without one).
    /// A connection without a valid header is closed.
    pub fn proxy_reporter(name: &str) -> Frontend {
        Frontend {
            name: name.to_owned(),
            servers: Vec::new(),
            reports_proxy_header: true,
            tls_pem: None,
        }
    }

    /// [`Frontend::proxy_reporter`] speaking HTTPS with the certificate
    /// and key in `pem`: the PROXY header, then TLS (as nginx's `listen
    /// 443 ssl proxy_protocol`).
    pub fn proxy_reporter_tls(name: &str, pem: PathBuf) -> Frontend {
        Frontend { tls_pem: Some(pem), ..Frontend::proxy_reporter(name) }
    }
}

/// The health check every server gets.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The HTTP path (`option httpchk GET PATH`); 2xx and 3xx count as up.
    pub path: String,
    /// Time between checks (`inter`).
    pub inter: Duration,
    /// Consecutive failures that mark a server DOWN (`fall`).
    pub fall: u32,
    /// Consecutive successes that mark it UP again (`rise`).
    pub rise: u32,
}

impl Default for HealthCheck {
    /// `GET /ready` every 200 ms; DOWN after 2 failures, UP after 2 passes.
    fn default() -> HealthCheck {
        HealthCheck { path: "/ready".into(), inter: Duration::from_millis(200), fall: 2, rise: 2 }
    }
}

/// What [`Haproxy::start`] runs.
#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    /// The public listeners.
    pub frontends: Vec<Frontend>,
    /// The servers' health check.
    pub check: HealthCheck,
    /// The `balance` algorithm of every frontend: `roundrobin` (the
    /// default), `leastconn`, `first`, `source`, ...
    pub balance: String,
    /// `timeout connect` towards servers (and `timeout check`).
    pub connect_timeout: Duration,
    /// `timeout client` and `timeout server`: how long an idle connection
    /// through HAProxy lives.
    pub idle_timeout: Duration,
    /// `retries` and `option redispatch`: a connection a server refuses
    /// (a node that just died, before the checks see it) is tried again
    /// on another server, `Some(n)` times; `None` leaves HAProxy's default
    /// (3 retries on the same server, no redispatch).
    pub redispatch: Option<u32>,
}

impl HaproxyConfig {
    /// `frontends` with the default health check, round-robin balancing,
    /// a 1 s connect timeout and a 60 s idle timeout.
    pub fn new(frontends: Vec<Frontend>) -> HaproxyConfig {
        HaproxyConfig {
            frontends,
            check: HealthCheck::default(),
            balance: "roundrobin".into(),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            redispatch: None,
        }
    }

    /// The haproxy.cfg text with `binds[i]` for frontend `i`.
    fn render(&self, socket: &std::path::Path, binds: &[SocketAddr]) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
        let mut cfg = format!(
            "global\n  stats socket {} level admin\n  maxconn 4096\n\n\
             defaults\n  mode tcp\n  timeout connect {connect}\n  timeout check {connect}\n\
             \x20 timeout client {idle}\n  timeout server {idle}\n",
            socket.display(),
            connect = ms(self.connect_timeout),
            idle = ms(self.idle_timeout),
        );
        if let Some(retries) = self.redispatch {
            cfg.push_str(&format!("  retries {retries}\n  option redispatch 1\n"));
        }
        let check = &self.check;
        for (frontend, bind) in self.frontends.iter().zip(binds) {
            if frontend.reports_proxy_header {
                let tls = frontend
                    .tls_pem
                    .as_ref()
                    .map(|pem| format!(" ssl crt {}", pem.display()))
                    .unwrap_or_default();
                cfg.push_str(&format!(
                    "\nlisten {}\n  bind {bind} accept-proxy{tls}\n  mode http\n\
                     \x20 http-request return status 200 content-type text/plain lf-string \
                     \"src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]\\n\"\n",
                    frontend.name
                ));
                continue;
            }
            cfg.push_str(&format!(
                "\nlisten {}\n  bind {bind}\n  balance {}\n  option httpchk GET {}\n",
                frontend.name, self.balance, check.path
            ));
            for s in &frontend.servers {
                let proxy = match s.send_proxy {
                    SendProxy::None => "",
                    SendProxy::V1 => " send-proxy",
                    SendProxy::V2 => " send-proxy-v2",
                };
                cfg.push_str(&format!(
                    "  server {} {} check addr {} port {} inter {} fall {} rise {}{proxy}\n",
                    s.name,
                    s.addr,
                    s.check_addr.ip(),
                    s.check_addr.port(),
                    ms(check.inter),
                    check.fall,
                    check.rise,
                ));
            }
        }
        cfg
    }
}

/// One server's state as `show stat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// The server's name.
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, `NOLB`, or a transition such as
    /// `UP 1/2` (up, one failed check of the two that make it DOWN).
    pub status: String,
    /// The last check's result: `L7OK`, `L7STS` (bad HTTP status), `L4CON`
    /// (refused), ... ; `INI` before the first check. HAProxy starts
    /// servers UP, before any check.
    pub check_status: String,
}

/// A running HAProxy. See the module docs.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    frontends: Vec<(String, SocketAddr)>,
    config_text: String,
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Writes the config with a free loopback port per frontend, starts
    /// HAProxy and waits until it answers on its stats socket (by then
    /// every `bind` is listening).
    ///
    /// Returns `None` when haproxy is missing (after
    /// [`cannot_run`](crate::skip::cannot_run), which panics under CI).
    /// Panics, with the config and HAProxy's output, if the config is
    /// refused or it does not start within [`STARTED_WITHIN`]. A port taken
    /// between choosing and binding it makes a fresh attempt on new ports.
    pub async fn start(test: &str, config: HaproxyConfig) -> Option<Haproxy> {
        let found = Command::new("haproxy").arg("-v").stdout(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            crate::skip::cannot_run(test, "haproxy not found: apt-get install haproxy");
            return None;
        }
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Haproxy::try_start(&config).await {
                Ok(haproxy) => return Some(haproxy),
                Err(why) if why.contains("cannot bind") || why.contains("in use") => last = why,
                Err(why) => panic!("haproxy did not start: {why}"),
            }
        }
        panic!("haproxy did not start after {START_ATTEMPTS} attempts: {last}")
    }

    async fn try_start(config: &HaproxyConfig) -> Result<Haproxy, String> {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let socket = dir.path().join("admin.sock");
        let mut binds: Vec<SocketAddr> = Vec::new();
        while binds.len() < config.frontends.len() {
            let addr = crate::free_port();
            if !binds.contains(&addr) {
                binds.push(addr);
            }
        }
        let config_text = config.render(&socket, &binds);
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config_text).expect("write haproxy.cfg");
        let mut child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn haproxy");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        for out in [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut log = log.lock().expect("haproxy log");
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let frontends = config.frontends.iter().map(|f| f.name.clone()).zip(binds).collect();
        let mut haproxy = Haproxy { child, socket, frontends, config_text, log, _dir: dir };
        let until = tokio::time::Instant::now() + STARTED_WITHIN;
        loop {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                // Let the readers catch the last lines before reporting them.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("haproxy exited ({status})\n{}", haproxy.logs()));
            }
            if haproxy.command("show info").await.is_ok_and(|info| info.contains("Pid:")) {
                return Ok(haproxy);
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "no stats socket within {STARTED_WITHIN:?}\n{}",
                    haproxy.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Where frontend `name` listens. Panics if there is no such frontend.
    pub fn frontend_addr(&self, name: &str) -> SocketAddr {
        self.frontends
            .iter()
            .find_map(|(n, addr)| (n == name).then_some(*addr))
            .unwrap_or_else(|| panic!("no haproxy frontend {name:?}"))
    }

    /// The config HAProxy runs, then the last lines it printed (server
    /// state changes are logged as warnings), for failure messages.
    pub fn logs(&self) -> String {
        let log = self.log.lock().expect("haproxy log");
        let lines: Vec<&str> = log.iter().map(String::as_str).collect();
        format!("--- haproxy.cfg:\n{}--- haproxy output:\n{}", self.config_text, lines.join("\n"))
    }

    /// Sends one command to the admin stats socket (e.g. `show stat`,
    /// `disable server web/a`, `set server web/a state drain`) and returns
    /// the answer.
    ///
    /// # Errors
    /// The socket cannot be reached or the answer not read within 2 s.
    pub async fn command(&self, command: &str) -> std::io::Result<String> {
        let exchange = async {
            let mut unix = tokio::net::UnixStream::connect(&self.socket).await?;
            unix.write_all(format!("{command}\n").as_bytes()).await?;
            // Without "prompt" HAProxy answers one command and closes.
            let mut answer = Vec::new();
            unix.take(16 * 1024 * 1024).read_to_end(&mut answer).await?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "stats socket"))?
    }

    /// Every server of `backend` (a frontend's name) with its state, from
    /// `show stat`. Panics if the stats socket does not answer.
    pub async fn server_states(&self, backend: &str) -> Vec<ServerState> {
        let stat = self
            .command("show stat")
            .await
            .unwrap_or_else(|e| panic!("haproxy show stat: {e}\n{}", self.logs()));
        parse_show_stat(&stat, backend)
    }

    /// Waits until `server` of `backend` has `status` (exactly, e.g. "UP"
    /// or "DOWN") after at least one health check (servers start UP before
    /// any check, so "UP" here means a check passed). Panics with the
    /// states and HAProxy's log after `timeout`.
    pub async fn wait_server_state(
        &self,
        backend: &str,
        server: &str,
        status: &str,
        timeout: Duration,
    ) {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let states = self.server_states(backend).await;
            let state = states.iter().find(|s| s.name == server);
            if state.is_some_and(|s| s.status == status && s.check_status != "INI") {
                return;
            }
            if tokio::time::Instant::now() >= until {
                panic!(
                    "haproxy {backend}/{server} not {status} within {timeout:?}: {states:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers of `backend` in a `show stat` CSV (header `# pxname,svname,...`).
fn parse_show_stat(csv: &str, backend: &str) -> Vec<ServerState> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .unwrap_or_else(|| panic!("show stat without a header: {csv:?}"))
        .split(',')
        .collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} in show stat"))
    };
    let (px, sv, status, check) =
        (column("pxname"), column("svname"), column("status"), column("check_status"));
    lines
        .map(|line| line.split(',').collect::<Vec<&str>>())
        .filter(|f| f.len() > check && f[px] == backend)
        .filter(|f| f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| ServerState {
            name: f[sv].to_owned(),
            status: f[status].to_owned(),
            check_status: f[check].trim_start_matches(['*', ' ']).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_one_listen_section_per_frontend_with_checks_and_proxy_headers() {
        let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let api: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let config = HaproxyConfig::new(vec![Frontend::new(
            "web",
            vec![Server::new("a", a, api).send_proxy(SendProxy::V2), Server::new("b", a, api)],
        )]);
        let text = config.render(std::path::Path::new("/t/admin.sock"), &[a]);
        assert!(text.contains("stats socket /t/admin.sock level admin"), "{text}");
        assert!(text.contains("listen web\n  bind 127.0.0.1:7001\n"), "{text}");
        assert!(text.contains("option httpchk GET /ready"), "{text}");
        assert!(
            text.contains(
                "server a 127.0.0.1:7001 check addr 127.0.0.1 port 9001 inter 200ms fall 2 rise 2 send-proxy-v2\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("rise 2 send-proxy-v2\n  server b 127.0.0.1:7001 check addr 127.0.0.1 port 9001 inter 200ms fall 2 rise 2\n"), "{text}");
    }

    #[test]
    fn show_stat_rows_of_one_backend_without_its_summary_rows() {
        let csv = "# pxname,svname,status,weight,check_status\n\
                   web,FRONTEND,OPEN,,\n\
                   web,a,UP,1,L7OK\n\
                   web,b,DOWN,1,* L7STS\n\
                   web,BACKEND,UP,1,\n\
                   other,a,DOWN,1,L4CON\n";
        let states = parse_show_stat(csv, "web");
        let got: Vec<(&str, &str, &str)> = states
            .iter()
            .map(|s| (s.name.as_str(), s.status.as_str(), s.check_status.as_str()))
            .collect();
        assert_eq!(got, [("a", "UP", "L7OK"), ("b", "DOWN", "L7STS")]);
    }
}
