//! Resilience of the real agent binaries: a cloud restart under twenty
//! edges (no thundering herd, everyone back), a long churn of short
//! connections (descriptors, memory and threads back to their baseline),
//! and a SIGTERM of the cloud in the middle of a transfer.
//!
//! Ports are learnt from the agents' own log lines (port 0 except where a
//! port must survive a restart), and every wait is on a log line or a
//! bounded poll. The tests take turns (they measure timing and resources
//! of whole processes, so they should not share the CPU with each other).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, STARTUP, TOKEN, cloud_toml_with_control, echo_server, edge_toml,
    eventually, free_port, listen_addr, log_time, parse_debug_duration, serves, sha256,
    start_cloud, start_cloud_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1024 * 1024;

/// Now, as UTC time since midnight (comparable with [`log_time`]).
fn time_of_day() -> Duration {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    Duration::from_nanos((since_epoch.as_nanos() % (86_400 * 1_000_000_000)) as u64)
}

/// The `retry_in=` of an edge's "tunnel not established" or "tunnel down"
/// line.
fn retry_in(line: &str) -> Duration {
    let value = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("retry_in="))
        .unwrap_or_else(|| panic!("no retry_in in {line:?}"));
    parse_debug_duration(value)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `(min, max)` of `values`, which must not be empty.
fn min_max(values: &[Duration]) -> (Duration, Duration) {
    let min = values.iter().min().copied().expect("values");
    let max = values.iter().max().copied().expect("values");
    (min, max)
}

/// `values` sorted, in milliseconds, for a failure or progress message.
fn sorted_ms(values: &[Duration]) -> String {
    let mut v = values.to_vec();
    v.sort();
    let v: Vec<String> = v.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    format!("[{}] ms", v.join(", "))
}

const EDGES: usize = 20;
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Failed redials each edge must log while the cloud is down: enough for
/// the backoff to reach its cap.
const FAILURES_WHILE_DOWN: usize = 4;

fn edge_id(i: usize) -> String {
    format!("edge-{i:02}")
}

fn edge_token(i: usize) -> String {
    format!("Kq{i:02}Zt8VwKx1pL0eYb7NsR4uHc9JmA2f")
}

/// A cloud that knows edges `edge-00`..`edge-19`, each with its own token,
/// listening for tunnels on `tunnel`, with no mappings.
fn many_edges_cloud_toml(tunnel: SocketAddr) -> String {
    let mut s = format!(
        "shutdown_grace = \"3s\"\n[tunnel]\nlisten = \"{tunnel}\"\n\
         heartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n"
    );
    for i in 0..EDGES {
        s.push_str(&format!("[[edges]]\nid = \"{}\"\ntoken = \"{}\"\n", edge_id(i), edge_token(i)));
    }
    s
}

/// Edge `i` of [`many_edges_cloud_toml`]: one tunnel, backoff 200 ms to 2 s.
fn many_edges_edge_toml(tunnel: SocketAddr, i: usize) -> String {
    format!(
        "cloud_url = \"ws://{tunnel}/tunnel\"\nedge_id = \"{}\"\ntoken = \"{}\"\n\
         allow = [\"127.0.0.1:9\"]\ntunnels = 1\nconnect_timeout = \"2s\"\nshutdown_grace = \"3s\"\n\
         [reconnect]\ninitial = \"{}ms\"\nmax = \"{}ms\"\n",
        edge_id(i),
        edge_token(i),
        RECONNECT_INITIAL.as_millis(),
        RECONNECT_MAX.as_millis()
    )
}

/// Twenty edges lose their cloud to SIGKILL at the same instant. Their
/// first redials must not come as one burst, every logged delay must follow
/// the backoff schedule up to its cap, and a cloud restarted on the same
/// port gets each of them back on its next redial.
///
/// Only what holds on a loaded machine is asserted: the delays each edge
/// logs (its "tunnel down" line carries the first) are the schedule's
/// draws; a redial never comes before its delay, only late by scheduling;
/// after the restart no edge fails more than the one dial that may have
/// raced the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_restart_with_many_edges_all_reconnect_with_spread_out_retries() {
    let _serial = SERIAL.lock().await;
    let tunnel = free_port();
    let toml = many_edges_cloud_toml(tunnel);
    let mut cloud = start_cloud_with(&toml, &[]).await;
    assert_eq!(cloud.tunnel, tunnel, "cloud listens elsewhere than configured");

    let started = Instant::now();
    let mut edges: Vec<Agent> =
        (0..EDGES).map(|i| Agent::spawn("relay-edge", &many_edges_edge_toml(tunnel, i))).collect();
    for (i, edge) in edges.iter_mut().enumerate() {
        let field = format!("edge={} ", edge_id(i));
        cloud.agent.wait_for_log(&["edge connected", &field], STARTUP).await;
        edge.wait_for_log(&["tunnel up"], STARTUP).await;
    }
    eprintln!("{EDGES} edges connected {:?} after they were started", started.elapsed());
    for (i, edge) in edges.iter_mut().enumerate() {
        assert!(
            !edge.logged().iter().any(|l| l.contains("tunnel not established")),
            "{} failed a dial before the cloud went away:\n{}",
            edge_id(i),
            edge.logged().join("\n")
        );
    }

    let killed_at = time_of_day();
    cloud.agent.signal("KILL");
    cloud.agent.wait_exit(Duration::from_secs(5)).await;
    assert!(!cloud.agent.is_running(), "cloud survived SIGKILL");

    // Per edge: when it saw the tunnel go, its first (unlogged) delay, the
    // instant of its first redial, and the delays it then logged.
    let mut noticed = Vec::new();
    let mut first_delays = Vec::new();
    let mut measured_delays = Vec::new();
    let mut first_redials = Vec::new();
    let mut first_logged = Vec::new();
    let mut last_failure = Duration::ZERO;
    let needle = ["tunnel not established", "cannot reach the cloud"];
    // Worst case for four failures: 0.2 + 0.4 + 0.8 + 1.6 s.
    let down_for = Duration::from_secs(10);
    for (i, edge) in edges.iter_mut().enumerate() {
        let down = edge.wait_for_log(&["tunnel down"], Duration::from_secs(5)).await;
        let failures = edge.wait_for_logs(&needle, FAILURES_WHILE_DOWN, down_for).await;
        let (down_at, redial_at) = (log_time(&down), log_time(&failures[0]));
        noticed.push(down_at.saturating_sub(killed_at));
        let first = retry_in(&down);
        assert!(
            first >= RECONNECT_INITIAL / 2 && first <= RECONNECT_INITIAL,
            "{}: first delay {first:?} outside [{:?}, {RECONNECT_INITIAL:?}]: {down}",
            edge_id(i),
            RECONNECT_INITIAL / 2
        );
        // The redial after it: never sooner (log stamps have microseconds).
        let measured = redial_at.saturating_sub(down_at);
        assert!(
            measured + Duration::from_millis(1) >= first,
            "{}: redialled {measured:?} after the tunnel went down, before its delay {first:?}",
            edge_id(i)
        );
        first_delays.push(first);
        measured_delays.push(measured);
        first_redials.push(redial_at.saturating_sub(killed_at));
        first_logged.push(retry_in(&failures[0]));
        last_failure = last_failure.max(log_time(&failures[FAILURES_WHILE_DOWN - 1]));
        // Failure k (from 1) logs the delay drawn from [d/2, d] with
        // d = initial * 2^k, capped: the first delay (d = initial) was the
        // unlogged one.
        for (k, line) in failures.iter().enumerate() {
            let d = (RECONNECT_INITIAL * (1 << (k + 1))).min(RECONNECT_MAX);
            let delay = retry_in(line);
            assert!(
                delay >= d / 2 && delay <= d,
                "{}: redial delay {} is {delay:?}, outside [{:?}, {d:?}]: {line}",
                edge_id(i),
                k + 2,
                d / 2
            );
        }
    }
    eprintln!("tunnel loss noticed after the kill: {}", sorted_ms(&noticed));
    eprintln!("first redial delays (logged): {}", sorted_ms(&first_delays));
    eprintln!("first redial delays (measured): {}", sorted_ms(&measured_delays));
    eprintln!("first redials after the kill: {}", sorted_ms(&first_redials));
    eprintln!("second delays (logged retry_in): {}", sorted_ms(&first_logged));

    // No thundering herd: the draws differ. 20 uniform draws over a 100 ms
    // range span less than 50 ms with probability about 2e-5.
    let herd_window = RECONNECT_INITIAL / 4;
    for (what, values) in [
        ("first redial delays", &first_delays),
        ("first redial instants", &first_redials),
        ("second delays", &first_logged),
    ] {
        let (min, max) = min_max(values);
        eprintln!("{what}: spread {:.0} ms ({:.0}..{:.0} ms)", ms(max - min), ms(min), ms(max));
        assert!(
            max - min >= herd_window,
            "{what} of {EDGES} edges all within {:?} (< {herd_window:?}): {}",
            max - min,
            sorted_ms(values)
        );
    }

    // The same port again: every edge is back on its next redial. At most
    // one failed dial per edge is stamped after the listener came up (one
    // refused just before the bind and logged just after); waiting is
    // bounded only so that a failure cannot hang the test.
    let restarted_at = Instant::now();
    let mut cloud = start_cloud_with(&toml, &[]).await;
    assert_eq!(cloud.tunnel, tunnel, "restarted cloud listens elsewhere");
    let listening = cloud.agent.wait_for_log(&["listening for edge tunnels"], STARTUP).await;
    let bound = RECONNECT_MAX + Duration::from_secs(30);
    let mut reconnects = Vec::new();
    for i in 0..EDGES {
        let field = format!("edge={} ", edge_id(i));
        let line = cloud.agent.wait_for_log(&["edge connected", &field], bound).await;
        reconnects.push(log_time(&line).saturating_sub(log_time(&listening)));
    }
    let listening_at = log_time(&listening);
    for (i, edge) in edges.iter_mut().enumerate() {
        let late: Vec<&String> = edge
            .logged()
            .iter()
            .filter(|l| needle.iter().all(|n| l.contains(n)) && log_time(l) > listening_at)
            .collect();
        assert!(
            late.len() <= 1,
            "{} failed {} dials after the cloud was listening again: {late:?}",
            edge_id(i),
            late.len()
        );
    }
    let all_back = restarted_at.elapsed();
    for edge in &mut edges {
        edge.wait_for_logs(&["tunnel up"], 2, Duration::from_secs(5)).await;
        assert!(edge.is_running(), "an edge exited");
    }
    let (first, last) = min_max(&reconnects);
    eprintln!(
        "cloud down {:.0} ms (after the last edge's 4th failed redial); restarted cloud: \
         all {EDGES} edges back {all_back:?} after the restart; \
         per edge after its listener: {} (first {:.0} ms, last {:.0} ms)",
        ms(last_failure.saturating_sub(killed_at)),
        sorted_ms(&reconnects),
        ms(first),
        ms(last)
    );
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").count()
}

/// A numeric field of /proc/PID/status (`Threads`, `VmRSS` in KiB).
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

fn figures(pid: u32) -> Figures {
    Figures {
        fds: fd_count(pid),
        rss_kib: status_field(pid, "VmRSS"),
        threads: status_field(pid, "Threads"),
    }
}

/// One short connection: 64 bytes there and back, then a clean close.
async fn short_connection(public: SocketAddr, n: u64) -> Result<(), String> {
    let run = async {
        let mut tcp = TcpStream::connect(public).await.map_err(|e| format!("connect: {e}"))?;
        let mut msg = [0u8; 64];
        fastrand::Rng::with_seed(n).fill(&mut msg);
        tcp.write_all(&msg).await.map_err(|e| format!("write: {e}"))?;
        let mut back = [0u8; 64];
        tcp.read_exact(&mut back).await.map_err(|e| format!("read echo: {e}"))?;
        if back != msg {
            return Err("echo differs".to_owned());
        }
        tcp.shutdown().await.map_err(|e| format!("half-close: {e}"))?;
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.map_err(|e| format!("read to EOF: {e}"))?;
        if rest.is_empty() { Ok(()) } else { Err(format!("{} bytes after the echo", rest.len())) }
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(result) => result,
        Err(_) => Err("not done within 10s".to_owned()),
    }
}

/// Runs `total` short connections in waves of `wave` concurrent ones;
/// returns the failures and how long each wave took.
async fn churn(
    public: SocketAddr,
    total: u64,
    wave: u64,
    first: u64,
) -> (Vec<String>, Vec<Duration>) {
    let mut failures = Vec::new();
    let mut waves = Vec::new();
    let mut n = first;
    while n < first + total {
        let wave_started = Instant::now();
        let this_wave = wave.min(first + total - n);
        let tasks: Vec<_> =
            (n..n + this_wave).map(|i| tokio::spawn(short_connection(public, i))).collect();
        for (i, task) in (n..).zip(tasks) {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("connection {i}: {e}")),
                Err(e) => failures.push(format!("connection {i}: task: {e}")),
            }
        }
        n += this_wave;
        waves.push(wave_started.elapsed());
    }
    (failures, waves)
}

/// The mapping `name` as the control API shows it.
async fn mapping(api: &Api, name: &str) -> serde_json::Value {
    let (status, body) = api.call("GET", &format!("/v1/mappings/{name}"), None).await;
    assert_eq!(status, 200, "GET mapping {name}: {body}");
    body
}

fn count(body: &serde_json::Value, field: &str) -> u64 {
    body[field].as_u64().unwrap_or_else(|| panic!("no {field} in {body}"))
}

/// Waits until `pid`'s descriptor count reads the same three times in a
/// row, 100 ms apart, and returns it.
async fn settled_fds(pid: u32) -> usize {
    let mut last = (fd_count(pid), 0);
    let settled = eventually(Duration::from_secs(10), || {
        let now = fd_count(pid);
        last = if now == last.0 { (now, last.1 + 1) } else { (now, 0) };
        let done = last.1 >= 2;
        async move {
            if !done {
                tokio::time::sleep(Duration::from_millis(75)).await;
            }
            done
        }
    })
    .await;
    assert!(settled, "descriptor count of {pid} never settled (last {})", last.0);
    last.0
}

/// Tens of thousands of short connections leave both agents as they were:
/// descriptors back to the baseline, memory and threads unchanged, and the
/// cloud's counters say every connection ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_returns_to_baseline() {
    const WARM_UP: u64 = 100;
    const CONNECTIONS: u64 = 20_000;
    const WAVE: u64 = 100;
    let _serial = SERIAL.lock().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let echo = echo_server().await;
    let toml = cloud_toml_with_control(
        "127.0.0.1:0",
        &[("echo", &echo.to_string())],
        &dir.path().join("state.json"),
    );
    let mut cloud = start_cloud_with(&toml, &["echo"]).await;
    let public = cloud.mappings[0];
    let control = cloud.agent.wait_for_log(&["control API listening"], STARTUP).await;
    let api = Api::new(listen_addr(&control), Some(ADMIN_TOKEN));
    let mut edge = Agent::spawn("relay-edge", &edge_toml(cloud.tunnel, &[echo.to_string()], TOKEN));
    edge.wait_for_logs(&["tunnel up"], 2, STARTUP).await;
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "mapping never served");

    let (failures, _) = churn(public, WARM_UP, WARM_UP, 0).await;
    assert!(failures.is_empty(), "warm-up failed: {failures:?}");
    let idle = eventually(Duration::from_secs(10), || async {
        count(&mapping(&api, "echo").await, "active_connections") == 0
    })
    .await;
    assert!(idle, "connections still active after the warm-up: {}", mapping(&api, "echo").await);
    let before = mapping(&api, "echo").await;
    let (cloud_pid, edge_pid) = (cloud.agent.pid(), edge.pid());
    let (cloud_fds, edge_fds) = (settled_fds(cloud_pid).await, settled_fds(edge_pid).await);
    let base = [
        ("cloud", cloud_pid, Figures { fds: cloud_fds, ..figures(cloud_pid) }),
        ("edge", edge_pid, Figures { fds: edge_fds, ..figures(edge_pid) }),
    ];
    eprintln!("baseline after {WARM_UP} connections (mapping {public}, echo {echo}): {base:?}");

    let started = Instant::now();
    let (failures, mut waves) = churn(public, CONNECTIONS, WAVE, WARM_UP).await;
    let took = started.elapsed();
    waves.sort();
    eprintln!(
        "{CONNECTIONS} connections in waves of {WAVE} in {took:?}: {:.0} connections/s, {} failed; \
         wave time median {:.0} ms, max {:.0} ms",
        CONNECTIONS as f64 / took.as_secs_f64(),
        failures.len(),
        ms(waves[waves.len() / 2]),
        ms(waves[waves.len() - 1])
    );
    if !failures.is_empty() {
        let lost = |log: &[String]| -> String {
            let lines: Vec<&str> = log
                .iter()
                .filter(|l| l.contains("edge tunnel closed") || l.contains("tunnel down"))
                .map(String::as_str)
                .collect();
            format!("({} lines)\n{}", lines.len(), tail_of(&lines, 10))
        };
        panic!(
            "{} of {CONNECTIONS} connections failed, e.g. {:?}\n\
             --- tunnels lost, cloud log:\n{}\n--- tunnels lost, edge log:\n{}",
            failures.len(),
            &failures[..failures.len().min(10)],
            lost(cloud.agent.logged()),
            lost(edge.logged())
        );
    }
    let peak = [figures(cloud_pid), figures(edge_pid)];
    eprintln!("right after the churn: cloud {:?}, edge {:?}", peak[0], peak[1]);

    // The cloud's counters: nothing open, every connection counted.
    let idle = eventually(Duration::from_secs(10), || async {
        count(&mapping(&api, "echo").await, "active_connections") == 0
    })
    .await;
    let now = mapping(&api, "echo").await;
    assert!(idle, "connections still active after the churn: {now}");
    let accepted = count(&now, "total_connections") - count(&before, "total_connections");
    let failed = count(&now, "failed_connections") - count(&before, "failed_connections");
    eprintln!(
        "control API: active 0, total {} (+{accepted}), failed +{failed}",
        now["total_connections"]
    );
    assert_eq!(accepted, CONNECTIONS, "total_connections counted {accepted} new connections");
    assert_eq!(failed, 0, "failed_connections grew: {now}");

    // Descriptors back to the baseline (+2), memory and threads unchanged.
    for (who, pid, base) in base {
        let settle = Instant::now();
        let mut fds = fd_count(pid);
        let back = eventually(Duration::from_secs(10), || {
            fds = fd_count(pid);
            std::future::ready(fds <= base.fds + 2)
        })
        .await;
        let after = Figures { fds, ..figures(pid) };
        eprintln!(
            "{who}: fds {} -> {} ({:?} to settle), RSS {} -> {} KiB ({:+} KiB), threads {} -> {}",
            base.fds,
            after.fds,
            settle.elapsed(),
            base.rss_kib,
            after.rss_kib,
            after.rss_kib as i64 - base.rss_kib as i64,
            base.threads,
            after.threads
        );
        assert!(back, "{who} holds {fds} descriptors after the churn, baseline {}", base.fds);
        assert!(
            after.rss_kib < base.rss_kib + 16 * 1024,
            "{who} RSS grew from {} to {} KiB",
            base.rss_kib,
            after.rss_kib
        );
        assert_eq!(after.threads, base.threads, "{who} thread count changed");
    }
    assert!(serves(public).await, "mapping does not serve after the churn");
    assert!(cloud.agent.is_running() && edge.is_running(), "an agent exited");
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn tail_of(lines: &[&str], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM on the cloud while a transfer is in flight: the listener closes
/// at once (a new client is refused), the transfer finishes intact within
/// the grace period, and the cloud exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sigterm_lets_transfers_in_flight_finish() {
    const SIZE: usize = 8 * MIB;
    const CHUNK: usize = 256 * 1024;
    const GRACE: Duration = Duration::from_secs(3); // the harness's shutdown_grace
    const PACE: Duration = Duration::from_millis(75);
    let _serial = SERIAL.lock().await;

    let echo = echo_server().await;
    let mut cloud = start_cloud("127.0.0.1:0", &[("echo", &echo.to_string())]).await;
    let public = cloud.mappings[0];
    let mut edge = Agent::spawn("relay-edge", &edge_toml(cloud.tunnel, &[echo.to_string()], TOKEN));
    edge.wait_for_log(&["tunnel up"], STARTUP).await;
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "mapping never served");

    let mut payload = vec![0u8; SIZE];
    fastrand::Rng::with_seed(0x5167).fill(&mut payload);
    let expected = sha256(&payload);

    let tcp = TcpStream::connect(public).await.expect("connect through the mapping");
    let (mut r, mut w) = tcp.into_split();
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut back = Vec::with_capacity(SIZE);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return Ok(back),
                Ok(n) => {
                    back.extend_from_slice(&buf[..n]);
                    progress_tx.send_replace(back.len());
                }
                Err(e) => return Err(format!("after {} bytes: {e}", back.len())),
            }
        }
    });

    // Lockstep: at most two chunks in flight, so the transfer is surely
    // still going when the signal comes halfway. After the signal, a pause
    // between chunks (PACE) keeps it going for a good part of the grace
    // period, so the cloud must relay while it shuts down.
    let started = Instant::now();
    let mut signalled = None;
    for (i, chunk) in payload.chunks(CHUNK).enumerate() {
        if i == SIZE / CHUNK / 2 {
            cloud.agent.signal("TERM");
            let at = Instant::now();
            signalled = Some(at);
            let closed = cloud
                .agent
                .wait_for_log(&["listener closed", "mapping=echo"], Duration::from_secs(2))
                .await;
            eprintln!(
                "SIGTERM after {:?} with {} KiB echoed; mapping listener closed {:?} later: {closed}",
                at - started,
                *progress.borrow() / 1024,
                at.elapsed()
            );
            match TcpStream::connect(public).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    eprintln!("new client after SIGTERM: {e}");
                }
                Err(e) => panic!("new client after SIGTERM: {e}, expected connection refused"),
                Ok(_) => panic!("a new client was accepted after SIGTERM"),
            }
        }
        if signalled.is_some() {
            tokio::time::sleep(PACE).await;
        }
        w.write_all(chunk).await.unwrap_or_else(|e| panic!("write chunk {i}: {e}"));
        let written = (i + 1) * CHUNK;
        let caught_up = tokio::time::timeout(
            Duration::from_secs(5),
            progress.wait_for(|got| *got + 2 * CHUNK >= written),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            caught_up,
            "echo stuck at {} of {written} bytes written\n{}",
            *progress.borrow(),
            tail(cloud.agent.logged(), 30)
        );
    }
    w.shutdown().await.expect("half-close");
    let back = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("no EOF within 10s of the half-close")
        .expect("reader task")
        .unwrap_or_else(|e| panic!("transfer broke: {e}\n{}", tail(cloud.agent.logged(), 30)));
    let signalled = signalled.expect("signal sent");
    let finished = signalled.elapsed();
    assert!(finished < GRACE, "the transfer outlasted the grace period ({finished:?})");
    assert_eq!(back.len(), SIZE, "echo length");
    assert!(sha256(&back) == expected, "echo checksum differs");
    eprintln!(
        "{} MiB echoed intact in {:?}; finished {finished:?} after SIGTERM",
        SIZE / MIB,
        started.elapsed()
    );

    let limit = GRACE + Duration::from_secs(2);
    let code = cloud.agent.wait_exit(limit.saturating_sub(signalled.elapsed())).await;
    eprintln!("cloud exited with {code:?} {:?} after SIGTERM", signalled.elapsed());
    assert_eq!(code, Some(0), "cloud did not exit 0 within {limit:?} of SIGTERM");
    let log = cloud.agent.logged();
    assert!(log.iter().any(|l| l.contains("SIGTERM received")), "no SIGTERM in the cloud log");
    assert!(
        !log.iter().any(|l| l.contains("grace period over")),
        "cloud reset connections although the transfer finished within the grace period"
    );
    edge.wait_for_log(&["tunnel down"], Duration::from_secs(5)).await;
    assert!(edge.is_running(), "edge exited with its cloud");
}
