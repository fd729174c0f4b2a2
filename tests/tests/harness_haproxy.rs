//! The HAProxy harness (`e2e_tests::haproxy`) against real HAProxy: health
//! checks mark a server whose readiness answers 503 DOWN and one answering
//! 200 UP, client bytes reach only the UP server, and `send-proxy` puts a
//! PROXY header in front of them.
//!
//! Needs haproxy: under `CI=true` its absence fails these tests, elsewhere
//! they print "SKIPPED" and return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e_tests::haproxy::{Frontend, Haproxy, HaproxyConfig, SendProxy, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// An HTTP responder answering every request with `status`, like a node's
/// `/ready`.
async fn readiness(status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind readiness");
    let addr = listener.local_addr().expect("readiness addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A TCP echo service that counts the connections it accepted.
async fn counted_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn checks_mark_the_unready_server_down_and_bytes_reach_only_the_ready_one() {
    let (ready_echo, ready_count) = counted_echo().await;
    let (unready_echo, unready_count) = counted_echo().await;
    let ready_api = readiness("200 OK").await;
    let unready_api = readiness("503 Service Unavailable").await;
    let config = HaproxyConfig::new(vec![
        Frontend::new(
            "web",
            vec![
                Server::new("ready", ready_echo, ready_api),
                Server::new("unready", unready_echo, unready_api),
            ],
        ),
        Frontend::new(
            "proxied",
            vec![Server::new("ready", ready_echo, ready_api).send_proxy(SendProxy::V1)],
        ),
    ]);
    let Some(lb) = Haproxy::start("haproxy_checks", config).await else { return };

    lb.wait_server_state("web", "unready", "DOWN", WAIT).await;
    lb.wait_server_state("web", "ready", "UP", WAIT).await;
    lb.wait_server_state("proxied", "ready", "UP", WAIT).await;
    let states = lb.server_states("web").await;
    let statuses: Vec<(&str, &str)> =
        states.iter().map(|s| (s.name.as_str(), s.status.as_str())).collect();
    assert_eq!(statuses, [("ready", "UP"), ("unready", "DOWN")], "{states:?}");
    assert_eq!(states[1].check_status, "L7STS", "a bad HTTP status: {states:?}");

    let web = lb.frontend_addr("web");
    for i in 0..6 {
        let payload = format!("hello {i}");
        let back = e2e_tests::echo_once(web, payload.as_bytes()).await.expect("echo via haproxy");
        assert_eq!(back, payload.as_bytes(), "{}", lb.logs());
    }
    assert_eq!(ready_count.load(Ordering::SeqCst), 6);
    assert_eq!(unready_count.load(Ordering::SeqCst), 0, "bytes went to the DOWN server");

    // send-proxy: the server sees a PROXY v1 line naming the client's
    // connection (to the frontend's port) before the client's bytes.
    let proxied = lb.frontend_addr("proxied");
    let back = e2e_tests::echo_once(proxied, b"data").await.expect("echo via proxied");
    let text = String::from_utf8_lossy(&back);
    let (line, rest) = text.split_once("\r\n").unwrap_or_else(|| panic!("no header: {text:?}"));
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[..4], ["PROXY", "TCP4", "127.0.0.1", "127.0.0.1"], "{text:?}");
    assert_eq!(fields[5], proxied.port().to_string(), "{text:?}");
    assert_eq!(rest, "data");
}

/// The check HAProxy sends (HTTP/1.0 `GET /ready`, no token) is one the
/// real control API answers: a running cloud agent is seen UP, and DOWN
/// once it has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cloud_agent_control_api_passes_the_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = e2e_tests::echo_server().await;
    let toml = e2e_tests::cloud_toml_with_control(
        "127.0.0.1:0",
        &[("web", &echo.to_string())],
        &dir.path().join("state.json"),
    );
    let cloud =
        agent_cloud::Cloud::start(e2e_tests::cloud_config(&toml)).await.expect("cloud starts");
    let web = cloud.mapping_addr("web").expect("web mapping");
    let api = cloud.control_addr().expect("control API");
    let config = HaproxyConfig::new(vec![Frontend::new("web", vec![Server::new("a", web, api)])]);
    let Some(lb) = Haproxy::start("haproxy_real_ready", config).await else { return };
    lb.wait_server_state("web", "a", "UP", WAIT).await;
    let state = lb.server_states("web").await;
    assert_eq!(state[0].check_status, "L7OK", "{state:?}");
    cloud.shutdown().await;
    lb.wait_server_state("web", "a", "DOWN", WAIT).await;
}
