//! The event log as a whole: recorded events come back in order with
//! increasing seqs, survive a restart through the file, and limit events
//! are rate-limited. The writer is a thread: tests poll with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

fn config(file: Option<&Path>, max_events: usize) -> EventsConfig {
    let mut config = EventsConfig::defaults(None);
    config.file = file.map(Path::to_path_buf);
    config.max_events = max_events;
    config
}

/// Waits until the log's newest seq is `seq`.
fn wait_for_seq(log: &EventLog, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.page(0, 1).last_seq < seq {
        assert!(Instant::now() < deadline, "seq {seq} never recorded: {:?}", log.page(0, 10));
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn seqs(page: &EventsPage) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn events_come_back_in_order_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let log = EventLog::start(&config(Some(&path), 3), Some("node-a".into()));
    log.record(EventKind::TunnelUp, "site-a", "tunnel 1 up");
    log.record(EventKind::MappingAdded, "web", "added through the api");
    log.record(EventKind::TunnelDown, "site-a", "tunnel 1 closed: heartbeat timeout");
    log.record(EventKind::MappingRemoved, "web", "removed through the api");
    wait_for_seq(&log, 4);
    let page = log.page(0, 100);
    assert_eq!(seqs(&page), [2, 3, 4], "the ring holds max_events");
    assert_eq!((page.oldest_seq, page.last_seq, page.dropped), (Some(2), 4, 0));
    assert_eq!(page.events[1].kind, EventKind::TunnelDown);
    assert_eq!(page.events[1].node.as_deref(), Some("node-a"));
    assert_eq!(seqs(&log.page(2, 1)), [3]);
    let counts: Vec<u64> = log.recorded().iter().map(|(_, n)| *n).collect();
    assert_eq!(counts.iter().sum::<u64>(), 4);
    log.close().await;

    let again = EventLog::start(&config(Some(&path), 3), None);
    assert_eq!(seqs(&again.page(0, 100)), [2, 3, 4], "loaded from the file");
    again.record(EventKind::NodeJoined, "b", "node b joined");
    wait_for_seq(&again, 5);
    assert_eq!(seqs(&again.page(0, 100)), [3, 4, 5], "seq continues");
    again.close().await;
}

#[tokio::test]
async fn a_torn_tail_is_skipped_and_the_file_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let log = EventLog::start(&config(Some(&path), 10), None);
    log.record(EventKind::EdgeDrained, "site-a", "drained");
    wait_for_seq(&log, 1);
    log.close().await;
    // A crash mid-write leaves half a line.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":2,\"at_un");
    std::fs::write(&path, text).unwrap();

    let log = EventLog::start(&config(Some(&path), 10), None);
    assert_eq!(seqs(&log.page(0, 10)), [1]);
    log.record(EventKind::EdgeUndrained, "site-a", "undrained");
    wait_for_seq(&log, 2);
    log.close().await;
    let lines: Vec<String> =
        std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| serde_json::from_str::<Event>(l).is_ok()), "{lines:?}");
}

#[tokio::test]
async fn the_file_stays_within_twice_max_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let log = EventLog::start(&config(Some(&path), 10), None);
    for i in 0..95 {
        log.record(EventKind::MappingAdded, "m", &format!("added {i}"));
        if i % 10 == 0 {
            wait_for_seq(&log, i + 1);
        }
    }
    wait_for_seq(&log, 95);
    log.close().await;
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!((10..=20).contains(&lines), "{lines} lines for max_events 10");
    let reloaded = EventLog::start(&config(Some(&path), 10), None);
    let page = reloaded.page(0, 100);
    assert_eq!(seqs(&page), (86..=95).collect::<Vec<_>>());
    reloaded.close().await;
}

#[tokio::test]
async fn limit_events_are_one_per_subject_per_interval() {
    let log = EventLog::start(&config(None, 100), None);
    for _ in 0..1000 {
        log.limit_hit(
            "max_connections",
            "web",
            "mapping web refused a client: at max_connections 2",
        );
    }
    log.limit_hit("max_connections", "db", "mapping db refused a client");
    log.limit_hit("tunnels", "web", "a different limit of the same subject");
    wait_for_seq(&log, 3);
    // Give a wrongly admitted fourth event the time to show up.
    log.record(EventKind::TunnelUp, "marker", "after the storm");
    wait_for_seq(&log, 4);
    let page = log.page(0, 100);
    let subjects: Vec<(&str, EventKind)> =
        page.events.iter().map(|e| (e.subject.as_str(), e.kind)).collect();
    assert_eq!(
        subjects,
        [
            ("web", EventKind::LimitHit),
            ("db", EventKind::LimitHit),
            ("web", EventKind::LimitHit),
            ("marker", EventKind::TunnelUp)
        ]
    );
    log.close().await;
}

#[test]
fn peer_text_is_escaped_and_cut() {
    assert_eq!(clean("  closed:\nforged line\u{1b}[2J ", 200), "closed:\\nforged line\\u{1b}[2J");
    let long = "é".repeat(500);
    let cut = clean(&long, MAX_TEXT_CHARS);
    assert_eq!(cut.chars().count(), MAX_TEXT_CHARS);
    assert!(cut.ends_with('…'));
    assert_eq!(clean("short", 10), "short");
}
