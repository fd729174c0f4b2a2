//! `[events]` through the public API: the fixture's values, the defaults
//! with and without `[control]`, and the ends of the ranges.

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::*;

mod common;
use common::fixture;

const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";
const ADMIN: &str = "Zk3pQ8rT1vW6yB0nM4cX7sL2dF9gH5jA";

fn cloud(extra: &str) -> Result<CloudConfig, ConfigError> {
    let text = format!(
        "[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n{extra}"
    );
    CloudConfig::from_toml(&text, Path::new("/etc/relay/cloud.toml"))
}

#[test]
fn fixture_values() {
    let c =
        CloudConfig::load(&fixture("cloud/valid/events.toml")).unwrap_or_else(|e| panic!("{e}"));
    let e = c.events;
    assert_eq!(e.max_events, 500);
    assert_eq!(e.file, Some(fixture("cloud/valid/events/cloud-events.jsonl")));
    assert_eq!(e.webhooks, ["http://127.0.0.1:9000/hook", "http://hooks.internal/relay?team=ops"]);
    assert_eq!(e.webhook_timeout, Duration::from_secs(2));
    assert_eq!((e.webhook_queue, e.webhook_retries), (100, 0));
}

#[test]
fn defaults_follow_the_state_file() {
    let alone = cloud("").unwrap().events;
    assert_eq!(alone, EventsConfig::defaults(None));
    assert_eq!(alone.file, None, "no [control], no state file: in memory only");
    assert_eq!(alone.max_events, DEFAULT_EVENTS_MAX as usize);
    assert_eq!(alone.max_events, 10_000);
    assert!(alone.webhooks.is_empty());
    assert_eq!(alone.webhook_timeout, DEFAULT_WEBHOOK_TIMEOUT);
    assert_eq!(alone.webhook_queue, DEFAULT_WEBHOOK_QUEUE as usize);
    assert_eq!(alone.webhook_retries, DEFAULT_WEBHOOK_RETRIES);

    let control = format!(
        "[control]\nadmin_token = \"{ADMIN}\"\nstate_file = \"/var/lib/relay/state.json\"\n"
    );
    let with_control = cloud(&control).unwrap().events;
    assert_eq!(with_control.file, Some(PathBuf::from("/var/lib/relay/relay-cloud-events.jsonl")));
    // An [events] table without `file` keeps the default place.
    let table = cloud(&format!("{control}[events]\nmax_events = 20\n")).unwrap().events;
    assert_eq!(table.file, with_control.file);
    assert_eq!(table.max_events, 20);
    // A relative file is resolved against the config file's directory.
    let relative = cloud("[events]\nfile = \"ev.jsonl\"\n").unwrap().events;
    assert_eq!(relative.file, Some(PathBuf::from("/etc/relay/ev.jsonl")));
}

#[test]
fn range_ends() {
    for (key, low, high) in [
        ("max_events", "10", "1000000"),
        ("webhook_queue", "1", "100000"),
        ("webhook_retries", "0", "100"),
    ] {
        for ok in [low, high] {
            cloud(&format!("[events]\n{key} = {ok}\n"))
                .unwrap_or_else(|e| panic!("{key} {ok}: {e}"));
        }
    }
    for (key, bad) in [("max_events", "9"), ("webhook_queue", "100001"), ("webhook_retries", "101")]
    {
        let err = cloud(&format!("[events]\n{key} = {bad}\n")).unwrap_err().to_string();
        assert!(err.contains(&format!("events.{key}: {bad} is out of range")), "{err}");
        assert!(err.contains("cloud.toml:7:"), "{err}");
    }
    let err = cloud("[events]\nwebhook_timeout = \"61s\"\n").unwrap_err().to_string();
    assert!(err.contains("events.webhook_timeout: \"61s\" is out of range"), "{err}");
    let many: Vec<String> = (0..=MAX_WEBHOOKS).map(|i| format!("\"http://h/{i}\"")).collect();
    let err = cloud(&format!("[events]\nwebhooks = [{}]\n", many.join(","))).unwrap_err();
    assert!(err.to_string().contains("events.webhooks: 17 URLs, expected at most 16"), "{err}");
}
