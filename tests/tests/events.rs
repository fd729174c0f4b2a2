//! The event log with the real binaries: tunnels and mapping changes are
//! recorded and survive a cloud restart (seq continues), webhooks get
//! every event in order after a receiver's failures and keep a bounded,
//! counted queue when it is down, and `relayctl events` prints and
//! follows the log, across a restart of the cloud.
//!
//! Every wait is a poll with a deadline on the API or a log line.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{Event, EventKind, EventsPage};
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, STARTUP, TOKEN, bin, cloud_toml_with_control, echo_server, edge_toml,
    eventually, free_port, listen_addr,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

/// A running relay-cloud with its control API.
struct Cloud {
    agent: Agent,
    tunnel: SocketAddr,
    api: Api,
    control: SocketAddr,
}

/// The config of [`start_cloud`]: one config mapping `base` to `target`,
/// state (and events) in `dir`, the control API on `control`, and
/// `events` appended as the `[events]` table's keys (none: defaults).
fn config(dir: &Path, control: SocketAddr, target: SocketAddr, events: &str) -> String {
    let mut toml = cloud_toml_with_control(
        "127.0.0.1:0",
        &[("base", &target.to_string())],
        &dir.join("state.json"),
    );
    toml = toml.replacen(
        "listen = \"127.0.0.1:0\"\nadmin_token",
        &format!("listen = \"{control}\"\nadmin_token"),
        1,
    );
    if !events.is_empty() {
        toml.push_str(&format!("[events]\n{events}\n"));
    }
    toml
}

async fn start_cloud(config: &str) -> Cloud {
    let mut agent = Agent::spawn("relay-cloud", config);
    let tunnel = listen_addr(&agent.wait_for_log(&["listening for edge tunnels"], STARTUP).await);
    let control = listen_addr(&agent.wait_for_log(&["control API listening"], STARTUP).await);
    Cloud { agent, tunnel, api: Api::new(control, Some(ADMIN_TOKEN)), control }
}

async fn stop(cloud: &mut Cloud) {
    cloud.agent.signal("TERM");
    assert_eq!(cloud.agent.wait_exit(WAIT).await, Some(0), "cloud exits cleanly");
}

async fn page(api: &Api, since: u64) -> EventsPage {
    let (status, body) =
        api.call("GET", &format!("/v1/events?since={since}&limit=10000"), None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not an events page ({e}): {body}"))
}

/// Waits for an event of `kind` about `subject` whose text contains
/// `text`, and returns it.
async fn wait_for_event(api: &Api, kind: EventKind, subject: &str, text: &str) -> Event {
    wait_for_event_after(api, 0, kind, subject, text).await
}

/// As [`wait_for_event`], among the events after seq `since`.
async fn wait_for_event_after(
    api: &Api,
    since: u64,
    kind: EventKind,
    subject: &str,
    text: &str,
) -> Event {
    let found = Arc::new(Mutex::new(None));
    let ok = eventually(WAIT, || {
        let (api, found) = (api.clone(), Arc::clone(&found));
        async move {
            let hit = page(&api, since)
                .await
                .events
                .into_iter()
                .find(|e| e.kind == kind && e.subject == subject && e.text.contains(text));
            let is_some = hit.is_some();
            *found.lock().unwrap() = hit;
            is_some
        }
    })
    .await;
    let last = page(api, 0).await;
    assert!(ok, "no {kind} event for {subject} with {text:?}; the log: {:#?}", last.events);
    found.lock().unwrap().take().expect("found")
}

fn add(name: &str, target: SocketAddr) -> serde_json::Value {
    json!({"name": name, "listen": "127.0.0.1:0", "edge": "e1", "target": target.to_string()})
}

fn assert_consecutive(events: &[Event]) {
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "seqs without gaps: {events:#?}");
        assert!(pair[1].at_unix_ms >= pair[0].at_unix_ms, "{events:#?}");
    }
}

/// A metric's value in a `/metrics` text, by its full series name.
async fn metric(api: &Api, series: &str) -> Option<u64> {
    let (status, body) = api.call("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap_or_default().to_owned();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn tunnel_and_mapping_events_are_recorded_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let toml = config(dir.path(), free_port(), echo, "");
    let mut cloud = start_cloud(&toml).await;
    let api = cloud.api.clone();
    wait_for_event(&api, EventKind::MappingAdded, "base", "from the config file").await;

    let mut edge = Agent::spawn("relay-edge", &edge_toml(cloud.tunnel, &[echo.to_string()], TOKEN));
    wait_for_event(&api, EventKind::TunnelUp, "e1", "up (protocol").await;

    assert_eq!(api.call("POST", "/v1/mappings", Some(add("web", echo))).await.0, 201);
    wait_for_event(&api, EventKind::MappingAdded, "web", "added through the api").await;
    let drain = json!({"deadline_secs": 1});
    assert_eq!(api.call("POST", "/v1/mappings/web/drain", Some(drain)).await.0, 202);
    wait_for_event(&api, EventKind::MappingDrained, "web", "draining through the api").await;
    let spec = |name: &str| json!({"op": "add", "name": name, "listen": "127.0.0.1:0", "edge": "e1", "target": echo.to_string()});
    let batch = json!({"changes": [spec("db"), spec("db2")]});
    let (status, body) = api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    wait_for_event(&api, EventKind::MappingAdded, "db2", "added through the batch").await;
    let batch = json!({"changes": [{"op": "remove", "name": "db"}]});
    let (status, body) = api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    wait_for_event(&api, EventKind::MappingRemoved, "db", "removed through the batch").await;
    assert_eq!(api.call("DELETE", "/v1/mappings/db2", None).await.0, 204);
    wait_for_event(&api, EventKind::MappingRemoved, "db2", "removed through the api").await;
    // A dry run and a refused change record nothing.
    let dry = json!({"changes": [spec("dry")], "dry_run": true});
    assert_eq!(api.call("POST", "/v1/batch", Some(dry)).await.0, 200);
    // A refused change records nothing.
    assert_eq!(api.call("DELETE", "/v1/mappings/nope", None).await.0, 404);
    assert_eq!(api.call("POST", "/v1/edges/e1/drain", None).await.0, 202);
    wait_for_event(&api, EventKind::EdgeDrained, "e1", "drained through the api").await;
    assert_eq!(api.call("POST", "/v1/edges/e1/undrain", None).await.0, 200);
    wait_for_event(&api, EventKind::EdgeUndrained, "e1", "undrained").await;

    edge.signal("TERM");
    assert_eq!(edge.wait_exit(WAIT).await, Some(0));
    let down = wait_for_event(&api, EventKind::TunnelDown, "e1", "down: ").await;
    assert!(down.text.len() > "tunnel 1 down: ".len(), "the close reason is given: {down:?}");

    let before = page(&api, 0).await;
    let recorded_nothing = |s: &str| !before.events.iter().any(|e| e.subject == s);
    assert!(recorded_nothing("nope") && recorded_nothing("dry"), "{:#?}", before.events);
    assert_eq!(before.oldest_seq, Some(1));
    assert_eq!(before.events.last().map(|e| e.seq), Some(before.last_seq));
    assert_consecutive(&before.events);
    let ups = before.events.iter().filter(|e| e.kind == EventKind::TunnelUp).count() as u64;
    assert_eq!(metric(&api, "relay_events_total{kind=\"tunnel_up\"}").await, Some(ups));
    assert!(ups >= 2, "the edge keeps two tunnels: {:#?}", before.events);

    stop(&mut cloud).await;
    let mut cloud = start_cloud(&toml).await;
    let api = cloud.api.clone();
    let restarted =
        wait_for_event_after(&api, before.last_seq, EventKind::MappingAdded, "base", "config")
            .await;
    assert_eq!(restarted.seq, before.last_seq + 1, "seq continues after the restart");
    let after = page(&api, 0).await;
    assert_eq!(&after.events[..before.events.len()], &before.events[..], "old events still listed");
    assert_consecutive(&after.events);
    // `since` skips what a client has seen.
    let newer = page(&api, before.last_seq).await;
    assert_eq!(newer.events.first().map(|e| e.seq), Some(before.last_seq + 1));
    stop(&mut cloud).await;
}

/// An HTTP receiver on loopback that answers 500 to its first `failures`
/// requests and 200 after, keeping the bodies it accepted.
struct Receiver {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Event>>>,
    requests: Arc<Mutex<usize>>,
}

async fn receiver(failures: usize) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0));
    let (kept, count) = (Arc::clone(&accepted), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (kept, count) = (Arc::clone(&kept), Arc::clone(&count));
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut read = BufReader::new(read);
                // One request per connection keeps this receiver simple.
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length.min(64 * 1024)];
                if read.read_exact(&mut body).await.is_err() {
                    return;
                }
                let n = {
                    let mut count = count.lock().unwrap();
                    *count += 1;
                    *count
                };
                let status = if n <= failures {
                    "500 Internal Server Error"
                } else {
                    let event: Event = serde_json::from_slice(&body).expect("an event as JSON");
                    kept.lock().unwrap().push(event);
                    "200 OK"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = write.write_all(answer.as_bytes()).await;
            });
        }
    });
    Receiver { addr, accepted, requests }
}

#[tokio::test]
async fn a_webhook_gets_every_event_in_order_after_its_receiver_failed_at_first() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let hook = receiver(3).await;
    let events = format!(
        "webhooks = [\"http://{}/hook\"]\nwebhook_retries = 10\nwebhook_timeout = \"5s\"",
        hook.addr
    );
    let mut cloud = start_cloud(&config(dir.path(), free_port(), echo, &events)).await;
    let api = cloud.api.clone();
    for name in ["w1", "w2", "w3", "w4"] {
        assert_eq!(api.call("POST", "/v1/mappings", Some(add(name, echo))).await.0, 201);
    }
    let recorded = page(&api, 0).await.events;
    assert_eq!(recorded.len(), 5, "base and w1..w4: {recorded:#?}");
    let delivered = eventually(Duration::from_secs(30), || {
        let n = hook.accepted.lock().unwrap().len();
        let want = recorded.len();
        async move { n >= want }
    })
    .await;
    let accepted = hook.accepted.lock().unwrap().clone();
    assert!(delivered, "delivered {accepted:#?} of {recorded:#?}");
    assert_eq!(accepted, recorded, "every event, in order, once");
    assert_eq!(*hook.requests.lock().unwrap(), 3 + recorded.len(), "three failures, then one each");
    let series = |name: &str| format!("relay_events_webhook_{name}{{webhook=\"0\"}}");
    assert_eq!(metric(&api, &series("delivered_total")).await, Some(5));
    assert_eq!(metric(&api, &series("dropped_total")).await, Some(0));
    assert_eq!(metric(&api, &series("failed_total")).await, Some(0));
    let line = cloud.agent.wait_for_log(&["webhook POST failed", "webhook=0"], WAIT).await;
    assert!(!line.contains(&hook.addr.to_string()), "logs name the webhook by index: {line}");
    stop(&mut cloud).await;
}

#[tokio::test]
async fn a_webhook_receiver_that_is_down_costs_a_bounded_queue_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let down = free_port(); // nothing listens there
    let events = format!(
        "webhooks = [\"http://{down}/hook\"]\nwebhook_queue = 3\nwebhook_retries = 100\nwebhook_timeout = \"1s\""
    );
    let mut cloud = start_cloud(&config(dir.path(), free_port(), echo, &events)).await;
    let api = cloud.api.clone();
    // The first event (base) is being retried; ten more arrive behind it.
    wait_for_event(&api, EventKind::MappingAdded, "base", "").await;
    for i in 0..10 {
        assert_eq!(
            api.call("POST", "/v1/mappings", Some(add(&format!("m{i}"), echo))).await.0,
            201
        );
    }
    assert_eq!(page(&api, 0).await.events.len(), 11, "the log itself keeps every event");
    let series = |name: &str| format!("relay_events_webhook_{name}{{webhook=\"0\"}}");
    let counted = eventually(WAIT, || {
        let api = api.clone();
        let dropped = series("dropped_total");
        async move { metric(&api, &dropped).await == Some(7) }
    })
    .await;
    assert!(counted, "dropped: {:?}", metric(&api, &series("dropped_total")).await);
    assert_eq!(metric(&api, &series("queued")).await, Some(3), "the queue stays at webhook_queue");
    assert_eq!(metric(&api, &series("delivered_total")).await, Some(0));
    // A stuck receiver does not hold up the shutdown.
    stop(&mut cloud).await;
}

/// Runs relayctl to completion with the cloud's endpoint and token.
async fn relayctl(control: SocketAddr, token_file: &Path, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(bin("relayctl"));
    command
        .args(["--endpoint", &format!("http://{control}")])
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("RELAYCTL_TOKEN")
        .env("HOME", "/nonexistent");
    tokio::task::spawn_blocking(move || command.output().expect("run relayctl")).await.unwrap()
}

#[tokio::test]
async fn relayctl_prints_and_follows_the_event_log_across_a_cloud_restart() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A fixed control port, so that the followed stream can come back.
    let toml = config(dir.path(), free_port(), echo, "");
    let mut cloud = start_cloud(&toml).await;
    let api = cloud.api.clone();
    wait_for_event(&api, EventKind::MappingAdded, "base", "").await;
    assert_eq!(api.call("POST", "/v1/mappings", Some(add("web", echo))).await.0, 201);
    wait_for_event(&api, EventKind::MappingAdded, "web", "").await;

    let out = relayctl(cloud.control, &token_file, &["events", "-o", "json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect();
    assert_eq!(lines, page(&api, 0).await.events, "JSON lines, one event each");
    let out = relayctl(cloud.control, &token_file, &["events", "--since", "1"]).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("TIME") && rows[0].contains("KIND"), "{table}");
    assert_eq!(rows.len(), 2, "the header and the event after seq 1: {table}");
    assert!(rows[1].contains("mapping_added") && rows[1].contains("web"), "{table}");

    // Follow from seq 1: the backlog (web), then new events live.
    let mut follow = tokio::process::Command::new(bin("relayctl"))
        .args(["--endpoint", &format!("http://{}", cloud.control)])
        .arg("--token-file")
        .arg(&token_file)
        .args(["events", "-f", "--since", "1", "-o", "json"])
        .env_remove("RELAYCTL_TOKEN")
        .env("HOME", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("relayctl -f");
    let mut printed = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let mut next_event = async || -> Event {
        let line = tokio::time::timeout(WAIT, printed.next_line())
            .await
            .expect("an event line within the deadline")
            .expect("read")
            .expect("relayctl still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"))
    };
    let first = next_event().await;
    assert_eq!((first.seq, first.subject.as_str()), (2, "web"), "the backlog after --since");
    assert_eq!(api.call("POST", "/v1/mappings/web/drain", None).await.0, 202);
    let live = next_event().await;
    assert_eq!((live.seq, live.kind), (3, EventKind::MappingDrained), "{live:?}");

    // The cloud restarts on the same control port: relayctl reconnects
    // and resumes after seq 3, printing nothing twice.
    stop(&mut cloud).await;
    let mut cloud = start_cloud(&toml).await;
    let api = cloud.api.clone();
    let resumed = next_event().await;
    assert_eq!((resumed.seq, resumed.kind), (4, EventKind::MappingAdded), "{resumed:?}");
    assert_eq!(resumed.subject, "base");
    assert_eq!(api.call("POST", "/v1/mappings", Some(add("db", echo))).await.0, 201);
    let added = next_event().await;
    assert_eq!((added.seq, added.kind, added.subject.as_str()), (5, EventKind::MappingAdded, "db"));
    follow.start_kill().expect("stop relayctl");
    let mut stderr = String::new();
    let _ = follow.stderr.take().expect("stderr").read_to_string(&mut stderr).await;
    assert!(stderr.contains("reconnecting"), "says it lost the stream: {stderr}");
    stop(&mut cloud).await;
}

/// In a cluster each node records the nodes joining and leaving its node
/// list, and says in every event that it recorded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_nodes_joining_and_leaving_are_recorded_by_each_node() {
    use e2e_tests::cluster::start_nodes;
    let Some(etcd) = e2e_tests::etcd::EtcdCluster::start("events_cluster_nodes", 1).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let a = nodes[0].api.clone();
    let joined = wait_for_event(&a, EventKind::NodeJoined, "b", "node b joined").await;
    assert_eq!(joined.node.as_deref(), Some("a"), "the recording node: {joined:?}");
    // b keeps its own log, of what it saw.
    let on_b = wait_for_event(&nodes[1].api, EventKind::NodeJoined, "a", "node a joined").await;
    assert_eq!(on_b.node.as_deref(), Some("b"), "{on_b:?}");
    let b = &mut nodes[1];
    b.agent.signal("TERM");
    assert_eq!(b.agent.wait_exit(WAIT).await, Some(0));
    let left = wait_for_event_after(&a, joined.seq, EventKind::NodeLeft, "b", "left").await;
    assert_eq!(left.node.as_deref(), Some("a"));
}

/// A storm of clients refused at a mapping's `max_connections` is one
/// `limit_hit` event, not one per client.
#[tokio::test]
async fn a_connection_limit_storm_is_one_limit_event() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let mut cloud = start_cloud(&config(dir.path(), free_port(), echo, "")).await;
    let api = cloud.api.clone();
    let mut edge = Agent::spawn("relay-edge", &edge_toml(cloud.tunnel, &[echo.to_string()], TOKEN));
    wait_for_event(&api, EventKind::TunnelUp, "e1", "").await;
    let mut capped = add("capped", echo);
    capped["max_connections"] = json!(1);
    let (status, view) = api.call("POST", "/v1/mappings", Some(capped)).await;
    assert_eq!(status, 201, "{view}");
    let public: SocketAddr = view["bound"].as_str().expect("bound").parse().unwrap();
    // One client holds the only slot (its echo proves it is carried).
    let mut held = tokio::net::TcpStream::connect(public).await.unwrap();
    held.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    tokio::time::timeout(WAIT, held.read_exact(&mut back)).await.expect("echo").unwrap();
    for _ in 0..50 {
        if let Ok(mut extra) = tokio::net::TcpStream::connect(public).await {
            // Refused with a reset: reading ends at once.
            let _ = tokio::time::timeout(WAIT, extra.read(&mut back)).await;
        }
    }
    let hit = wait_for_event(&api, EventKind::LimitHit, "capped", "max_connections 1").await;
    // A later event shows the storm is over in the log.
    assert_eq!(api.call("POST", "/v1/edges/e1/drain", None).await.0, 202);
    let marker = wait_for_event(&api, EventKind::EdgeDrained, "e1", "").await;
    let log = page(&api, 0).await.events;
    let hits: Vec<&Event> = log.iter().filter(|e| e.kind == EventKind::LimitHit).collect();
    assert_eq!(hits, [&hit], "one event for 50 refusals: {log:#?}");
    assert!(marker.seq > hit.seq);
    drop(held);
    edge.signal("TERM");
    assert_eq!(edge.wait_exit(WAIT).await, Some(0));
    stop(&mut cloud).await;
}
