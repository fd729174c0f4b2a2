//! The real agents in a real network topology (see `e2e_tests::netns`):
//! the edge behind a NAT that lets nothing in, the service on a network only
//! the edge reaches, and faults made with nft, conntrack and tc in the nat.
//!
//! Needs root, `ip netns`, nft and tc (and conntrack for two tests);
//! without them each test fails under `CI=true`, and elsewhere prints
//! "SKIPPED <test>: <why>" and returns (`e2e_tests::skip`). Measured
//! figures go to stderr uncaptured, so they show without `--nocapture`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_tests::netns::{
    CLOUD_DOWN, CLOUD_IP, EDGE_DOWN, EDGE_LAN_IP, NAT_WAN_IP, Ns, Rig, SERVICE, count, report,
    time_of_day,
};
use e2e_tests::skip::cannot_run;

const PROBE: &str = env!("CARGO_BIN_EXE_e2e-probe");
const MIB: u64 = 1024 * 1024;
/// The bounds the fault tests assert.
const DETECTION: Duration = Duration::from_secs(5);
const RECOVERY: Duration = Duration::from_secs(10);

/// Echo through client → cloud mapping → tunnel → edge → on-prem service
/// with checksums; nothing on the wan connects to the edge, the nat's
/// tunnel ports or the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_path_works_through_nat_and_nothing_connects_in() {
    let Some(mut rig) = Rig::start("whole_path", PROBE, ("500ms", "2s"), &[]).await else { return };
    let out = rig.topo.echo(Ns::Client, rig.public, 4 * MIB, Duration::from_secs(20)).await;
    let out = out.unwrap_or_else(|e| panic!("4 MiB echo failed: {e}\n{}", rig.logs()));
    report(&format!("whole_path: 4 MiB each way: {out}"));

    // The cloud sees the tunnels coming from the nat, the edge from its LAN address.
    let at_cloud = rig.tunnel_peers();
    let at_edge = rig.topo.tcp_established(Ns::Edge).into_iter();
    let at_edge: Vec<SocketAddr> =
        at_edge.filter(|(_, p)| *p == rig.tunnel).map(|(l, _)| l).collect();
    report(&format!("whole_path: tunnels at the cloud from {at_cloud:?}, at the edge {at_edge:?}"));
    assert_eq!(at_cloud.len(), 2, "cloud tunnel connections: {at_cloud:?}");
    assert_eq!(at_edge.len(), 2, "edge tunnel connections: {at_edge:?}");
    assert!(at_cloud.iter().all(|p| p.ip().to_string() == NAT_WAN_IP), "not NATed: {at_cloud:?}");
    assert!(at_edge.iter().all(|l| l.ip().to_string() == EDGE_LAN_IP), "edge: {at_edge:?}");

    let mut targets: Vec<String> =
        at_edge.iter().chain(&at_cloud).map(ToString::to_string).collect();
    targets.extend([SERVICE.into(), format!("{EDGE_LAN_IP}:7002"), format!("{NAT_WAN_IP}:7002")]);
    for from in [Ns::Client, Ns::Cloud] {
        let mut args = vec!["connect", "1000"];
        args.extend(targets.iter().map(String::as_str));
        let (ok, out) = rig.topo.probe(from, &args, Duration::from_secs(5)).await;
        assert!(ok, "connect probe from {from:?}: {out}");
        report(&format!("whole_path: connects from {from:?}: {}", out.replace('\n', "; ")));
        assert_eq!(out.lines().count(), targets.len(), "probe output: {out}");
        for line in out.lines() {
            assert!(!line.ends_with(" connected"), "connected in from {from:?}: {line}");
        }
    }
    assert_eq!(count(&mut rig.edge, EDGE_DOWN), 0, "tunnels disturbed\n{}", rig.logs());
}

/// A silent blackhole in the nat (drop both ways, no RST): both sides
/// notice by heartbeat, and the edge comes back on its own after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_is_detected_and_heals() {
    let Some(mut rig) = Rig::start("partition", PROBE, ("500ms", "2s"), &[]).await else { return };
    let base = (count(&mut rig.edge, EDGE_DOWN), count(&mut rig.cloud, CLOUD_DOWN));
    let ups = count(&mut rig.edge, &["tunnel up"]);
    // A client connection open across the cut must be closed, not hang.
    let public = rig.public.to_string();
    let hold = rig.topo.probe(Ns::Client, &["hold", &public, "8000"], Duration::from_secs(10));
    let hold = tokio::spawn(async move { (hold.await.1, Instant::now()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, cut) = (time_of_day(), Instant::now());
    rig.topo.partition();
    report("partition: path cut (cloud heartbeat 500ms, timeout 2s; edge 3 x 500ms)");
    let detected = rig.assert_detected(base, t0, DETECTION).await;
    let (held, client_cut) = hold.await.expect("hold task");
    let client_cut = client_cut.saturating_duration_since(cut);
    report(&format!("partition: open client connection: {held} ({client_cut:?} after the cut)"));
    assert!(held.starts_with("closed"), "open client connection: {held}\n{}", rig.logs());
    assert!(client_cut < DETECTION, "open client cut only {client_cut:?} after the cut");
    let onprem = rig.topo.tcp_established(Ns::Onprem);
    assert!(onprem.is_empty(), "service connections left open: {onprem:?}\n{}", rig.logs());
    let during = rig.topo.echo(Ns::Client, rig.public, 1024, Duration::from_secs(1)).await;
    assert!(during.is_err(), "the mapping served during the partition: {during:?}");

    rig.topo.heal();
    let recovered = rig.assert_recovered(ups, RECOVERY).await;
    report(&format!(
        "partition: detected within {detected:?}; served {recovered:?} after the heal"
    ));
}

/// A conntrack flush in the nat. With the kernel default (tcp_loose=1) the
/// edge's next packet re-creates the same mapping and the tunnels carry on;
/// with tcp_loose=0 every packet of the old flows is invalid and dropped
/// (silently, both ways), which both sides must detect and recover from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_flush_is_recovered() {
    let tools = &["conntrack"];
    let Some(mut rig) = Rig::start("flush", PROBE, ("500ms", "2s"), tools).await else { return };
    let peers = rig.tunnel_peers();
    rig.topo.flush_conntrack();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let Some(served) = rig.serves_within(RECOVERY).await else {
        panic!("mapping not serving after a flush (tcp_loose=1)\n{}", rig.logs())
    };
    report(&format!("flush: tcp_loose=1: tunnels kept; served {served:?} after a 3 s watch"));
    assert_eq!(
        count(&mut rig.edge, EDGE_DOWN),
        0,
        "tcp_loose=1 flush broke a tunnel\n{}",
        rig.logs()
    );
    assert_eq!(rig.tunnel_peers(), peers, "tunnel connections changed");

    rig.topo.sysctl(Ns::Nat, "net.netfilter.nf_conntrack_tcp_loose", "0").expect("tcp_loose");
    let base = (count(&mut rig.edge, EDGE_DOWN), count(&mut rig.cloud, CLOUD_DOWN));
    let ups = count(&mut rig.edge, &["tunnel up"]);
    let t0 = time_of_day();
    rig.topo.flush_conntrack();
    let detected = rig.assert_detected(base, t0, DETECTION).await;
    let recovered = rig.assert_recovered(ups, RECOVERY).await;
    report(&format!(
        "flush: tcp_loose=0: detected within {detected:?}; served {recovered:?} later"
    ));
}

/// A NAT that forgets a flow after 5 s of silence and cannot pick it up
/// again (tcp_loose=0): a plain idle connection dies, while the tunnels on
/// the default heartbeat (2 s) stay the same connections through 15 s idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_survives_a_short_nat_idle_timeout() {
    let tools = &["conntrack"];
    let Some(mut rig) = Rig::start("idle", PROBE, ("2s", "6s"), tools).await else { return };
    // Per namespace since Linux 4.x; make sure the host's value is untouched.
    let key = "net.netfilter.nf_conntrack_tcp_timeout_established";
    let host_file = format!("/proc/sys/{}", key.replace('.', "/"));
    let host = std::fs::read_to_string(&host_file).unwrap_or_default();
    let set = rig.topo.sysctl(Ns::Nat, key, "5");
    let host_after = std::fs::read_to_string(&host_file).unwrap_or_default();
    if host_after != host {
        let _ = std::fs::write(&host_file, &host);
        cannot_run("idle", &format!("{key} is not per network namespace on this kernel"));
        return;
    }
    if let Err(why) = set {
        cannot_run("idle", &format!("{key} cannot be set in a namespace: {why}"));
        return;
    }
    rig.topo.sysctl(Ns::Nat, "net.netfilter.nf_conntrack_tcp_loose", "0").expect("tcp_loose");
    report(&format!("idle: {key}=5 and tcp_loose=0 in the nat (host keeps {})", host.trim()));

    // Remaining conntrack timeouts (s) of the two tunnels' entries in the nat.
    let tunnel_entries = || {
        let args = ["conntrack", "-L", "-p", "tcp", "--orig-dst", CLOUD_IP];
        let table = rig.topo.exec(Ns::Nat, &args).unwrap_or_default();
        let port = format!("dport={}", rig.tunnel.port());
        let timeouts: Vec<u64> = table
            .lines()
            .filter(|l| l.contains(&port) && l.contains("ESTABLISHED"))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect();
        assert_eq!(timeouts.len(), 2, "tunnel conntrack entries: {table}");
        timeouts
    };
    // Entries last refreshed before the change keep the old timeout until
    // their next packet (a heartbeat).
    let settling = Instant::now();
    while tunnel_entries().iter().any(|&t| t > 5) {
        let late = settling.elapsed() > Duration::from_secs(5);
        assert!(!late, "tunnel entries never took the 5 s timeout: {:?}", tunnel_entries());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Controls: plain connections from the edge to the cloud, idle 2 s and 8 s.
    let control_server = rig.topo.serve(Ns::Cloud, &format!("{CLOUD_IP}:7003")).await;
    let control: SocketAddr = format!("{CLOUD_IP}:7003").parse().expect("addr");
    let control = |idle| rig.topo.echo_after(Ns::Edge, control, 1024, idle, Duration::from_secs(3));
    let (short, long) = (control(Duration::from_secs(2)), control(Duration::from_secs(8)));

    let before = rig.tunnel_peers();
    let watch = async {
        let (mut longest, mut samples) = (0u64, 0usize);
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            longest = longest.max(tunnel_entries().into_iter().max().unwrap_or(0));
            samples += 1;
        }
        (longest, samples)
    };
    let (short, long, (longest, samples)) = tokio::join!(short, long, watch);
    drop(control_server);
    report(&format!("idle: plain connection idle 2 s: {short:?}; idle 8 s: {long:?}"));
    report(&format!("idle: tunnel entries seen in {samples} samples, timeout <= {longest}s"));
    assert!(short.is_ok(), "a connection idle 2 s failed: {short:?}");
    let dropped = long.as_ref().is_err_and(|e| e.contains("timed out"));
    assert!(dropped, "the NAT did not silently drop a flow idle 8 s: {long:?}");
    assert!(longest <= 5, "the short established timeout was not in force ({longest}s)");
    assert_eq!(count(&mut rig.edge, EDGE_DOWN), 0, "a tunnel went down\n{}", rig.logs());
    assert_eq!(count(&mut rig.cloud, CLOUD_DOWN), 0, "a tunnel closed\n{}", rig.logs());
    assert_eq!(rig.tunnel_peers(), before, "the tunnels' TCP connections changed");
    let served = rig.serves_within(Duration::from_secs(3)).await;
    assert!(served.is_some(), "mapping does not serve after the idle period\n{}", rig.logs());
}

/// 20 Mbit/s each way and 1 % random loss of forwarded packets in the nat:
/// 16 MiB each way arrive intact within 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_under_loss_and_rate_limit_arrives_intact() {
    let Some(mut rig) = Rig::start("loss", PROBE, ("500ms", "2s"), &[]).await else { return };
    rig.topo.shape("20mbit");
    rig.topo.add_loss(1);
    let started = Instant::now();
    let out = rig.topo.echo(Ns::Client, rig.public, 16 * MIB, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let out =
        out.unwrap_or_else(|e| panic!("16 MiB echo failed after {took:?}: {e}\n{}", rig.logs()));
    let mbit = (16 * MIB * 8) as f64 / took.as_secs_f64() / 1e6;
    let rules =
        rig.topo.exec(Ns::Nat, &["nft", "list", "table", "inet", "loss"]).unwrap_or_default();
    let dropped: u64 = rules
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in {rules}"));
    let downs = count(&mut rig.edge, EDGE_DOWN);
    report(&format!("loss: 16 MiB each way in {took:?} = {mbit:.1} Mbit/s each way; {out}"));
    report(&format!("loss: {dropped} packets dropped at random; tunnels down: {downs}"));
    assert!(dropped > 0, "the loss rule dropped nothing");
    assert!(took < Duration::from_secs(60), "transfer took {took:?}");
    assert_eq!(downs, 0, "a tunnel went down under load\n{}", rig.logs());
}
