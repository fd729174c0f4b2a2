//! What strangers can make the cloud agent write: peer text is escaped in
//! its log, and repeated refusals (handshakes, clients outside an
//! allowlist) log a bounded number of lines with a count. Runs the real
//! `relay-cloud` binary and reads its log.

use std::time::Duration;

use e2e_tests::fake_edge::{auth, challenge, recv_frame};
use e2e_tests::{TOKEN, start_cloud_with};
use futures_util::SinkExt;
use proto::{Frame, PROTOCOL_VERSION, RefuseCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A cloud with edge `e1` and mapping `closed`, whose allowlist no
/// loopback client is on.
fn config() -> String {
    format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n\
         [[mappings]]\nname = \"closed\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\n\
         target = \"127.0.0.1:9\"\nallow = [\"192.0.2.0/24\"]\n"
    )
}

/// Runs a handshake as `edge_id` (not configured) and checks the refusal.
async fn unknown_edge_handshake(cloud: std::net::SocketAddr, edge_id: &str) {
    let (mut ws, nonce) = challenge(cloud).await;
    let frame = auth(&nonce, edge_id, TOKEN, PROTOCOL_VERSION);
    ws.send(Message::Binary(e2e_tests::fake_edge::encode(&frame))).await.expect("send auth");
    match recv_frame(&mut ws).await {
        Some(Frame::Refuse { code, .. }) => assert_eq!(code, RefuseCode::UnknownEdge),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_id_cannot_forge_log_lines() {
    const FORGED: &str = "2026-12-02T00:00:00.000000Z ERROR relay: forged line";
    let mut cloud = start_cloud_with(&config(), &["closed"]).await;
    let edge_id = format!("nobody\n{FORGED}\u{1b}[2J");
    unknown_edge_handshake(cloud.tunnel, &edge_id).await;
    let line = cloud.agent.wait_for_log(&["edge refused"], Duration::from_secs(5)).await;
    let log = cloud.agent.logged().join("\n");
    assert!(
        !cloud.agent.logged().iter().any(|l| l.starts_with(FORGED)),
        "the edge id forged a log line:\n{log}"
    );
    assert!(
        line.contains(&format!("nobody\\n{FORGED}\\u{{1b}}[2J")),
        "the refusal does not show the edge id escaped: {line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_log_a_bounded_number_of_lines_and_a_count() {
    const TRIES: usize = 60;
    const LINES: usize = 10; // agent_cloud's LINES_PER_INTERVAL
    let mut cloud = start_cloud_with(&config(), &["closed"]).await;
    for _ in 0..TRIES {
        unknown_edge_handshake(cloud.tunnel, "scanner").await;
    }
    let closed = cloud.mappings[0];
    for _ in 0..TRIES {
        // Reset by the cloud, sometimes before connect() returns.
        let _ = TcpStream::connect(closed).await;
    }
    // Each kind sums up what it did not log, once its interval is over.
    let handshakes = cloud
        .agent
        .wait_for_log(&["refused tunnel handshakes", "more not logged"], Duration::from_secs(20))
        .await;
    let clients = cloud
        .agent
        .wait_for_log(
            &["clients refused by mapping closed", "more not logged"],
            Duration::from_secs(20),
        )
        .await;
    let log = cloud.agent.logged().to_vec();
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    let refused = count("edge refused");
    let denied = count("client not in the mapping's allowlist");
    let all = log.join("\n");
    eprintln!(
        "{refused} refusal lines, {denied} denial lines; summaries:\n{handshakes}\n{clients}"
    );
    assert!(refused <= LINES, "{refused} lines for {TRIES} refused handshakes:\n{all}");
    assert!(denied <= LINES, "{denied} lines for {TRIES} denied clients:\n{all}");
    let suppressed = |line: &str| -> usize {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("suppressed="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no suppressed= count in {line:?}"))
    };
    assert_eq!(
        refused + suppressed(&handshakes),
        TRIES,
        "every refusal is accounted for: {handshakes}"
    );
    assert_eq!(denied + suppressed(&clients), TRIES, "every denial is accounted for: {clients}");
}
