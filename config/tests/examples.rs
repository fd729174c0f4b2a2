//! The shipped `examples/cloud.toml` and `examples/edge.toml` load and
//! describe the loopback demo, and their commented-out `[log]` tables (and
//! the cloud's `[proxy_protocol]`) are valid once switched on.

use std::path::{Path, PathBuf};

use config::{CloudConfig, DEFAULT_LOG_ROTATION, DEFAULT_PROXY_PROTOCOL_TIMEOUT, EdgeConfig};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

#[test]
fn examples_load_and_agree() {
    let cloud = CloudConfig::load(&example("cloud.toml")).unwrap_or_else(|e| panic!("{e}"));
    let edge = EdgeConfig::load(&example("edge.toml")).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(cloud.tunnel.listen, "127.0.0.1:7000".parse().unwrap());
    assert!(cloud.tunnel.tls.is_none());
    assert_eq!(cloud.edges.len(), 1);
    assert_eq!(cloud.mappings.len(), 1);
    let mapping = &cloud.mappings[0];
    assert_eq!(mapping.name, "echo");
    assert_eq!(mapping.listen, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(mapping.edge, "demo-edge");
    assert_eq!(mapping.target.to_string(), "127.0.0.1:7002");

    assert_eq!(edge.cloud_url.to_string(), "ws://127.0.0.1:7000/tunnel");
    assert_eq!(edge.edge_id, "demo-edge");
    assert_eq!(edge.allow, vec![config::AllowEntry::Host(mapping.target.clone())]);

    // Both sides read the same token file, trimmed of its newline.
    let entry = cloud.edge(&edge.edge_id).expect("the edge's id is configured in the cloud");
    assert_eq!(entry.token.expose(), edge.token.expose());
    assert_eq!(edge.token.expose().len(), 43);

    // The control API is on, with its own token.
    let control = cloud.control.as_ref().expect("examples/cloud.toml has [control]");
    assert_eq!(control.listen, "127.0.0.1:7070".parse().unwrap());
    assert_eq!(control.state_file, example("relay-cloud-state.json"));
    assert_eq!(control.admin_token.expose().len(), 43);
    assert_ne!(control.admin_token.expose(), edge.token.expose());

    // [log] is only shown, commented out.
    assert!(cloud.log.is_none() && edge.log.is_none());
    assert!(cloud.proxy_protocol.is_none());
}

/// The example file with its commented-out `[log]` table switched on: the
/// `# [log]` line and the `# key = value` lines after it lose their `# `.
fn with_log_enabled(name: &str) -> String {
    let text = std::fs::read_to_string(example(name)).unwrap();
    let mut in_log = false;
    let mut out = String::new();
    for line in text.lines() {
        in_log |= line == "# [log]";
        let line = match line.strip_prefix("# ") {
            Some(rest) if in_log && !rest.starts_with('#') => rest,
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    assert!(in_log, "{name} has no commented-out [log] table");
    out
}

#[test]
fn commented_log_examples_are_valid() {
    let text = with_log_enabled("cloud.toml");
    let cloud =
        CloudConfig::from_toml(&text, &example("cloud.toml")).unwrap_or_else(|e| panic!("{e}"));
    let log = cloud.log.expect("[log] enabled");
    assert_eq!(log.file_prefix, "relay-cloud");
    assert_eq!((log.rotation, log.max_files), (DEFAULT_LOG_ROTATION, Some(14)));

    let text = with_log_enabled("edge.toml");
    let edge =
        EdgeConfig::from_toml(&text, &example("edge.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(edge.log.expect("[log] enabled").file_prefix, "relay-edge");
}

/// Every token shipped in `examples/` is known as a demo token, so none
/// can be added without being refused beyond loopback.
#[test]
fn the_shipped_tokens_are_demo_tokens() {
    let mut found = 0;
    for entry in std::fs::read_dir(example("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "token") {
            let text = std::fs::read(&path).unwrap();
            assert!(config::is_demo_token(text.trim_ascii_end()), "{}", path.display());
            found += 1;
        }
    }
    assert!(found >= 2, "found only {found} example tokens");
}

/// The examples, moved beyond loopback, refuse their public demo tokens.
#[test]
fn the_examples_refuse_their_demo_tokens_beyond_loopback() {
    let text = std::fs::read_to_string(example("cloud.toml")).unwrap();
    let exposed = text.replace(
        "listen = \"127.0.0.1:7000\"",
        "listen = \"0.0.0.0:7000\"\nallow_plaintext = true",
    );
    assert_ne!(exposed, text, "examples/cloud.toml no longer listens on 127.0.0.1:7000");
    let err = CloudConfig::from_toml(&exposed, &example("cloud.toml")).expect_err("demo token");
    assert!(
        err.message().starts_with("edges[0].token_file: this is the repository's demo token"),
        "{err}"
    );

    let text = std::fs::read_to_string(example("edge.toml")).unwrap();
    let exposed = text.replace("ws://127.0.0.1:7000", "wss://relay.example.com");
    assert_ne!(exposed, text, "examples/edge.toml no longer dials ws://127.0.0.1:7000");
    let err = EdgeConfig::from_toml(&exposed, &example("edge.toml")).expect_err("demo token");
    assert!(err.message().starts_with("token_file: this is the repository's demo token"), "{err}");
}

/// The cloud example with one commented-out table switched on: from its
/// `# [table]` line to the next blank line, `# key` lines lose their `# `.
fn with_cloud_table_enabled(table: &str) -> String {
    let text = std::fs::read_to_string(example("cloud.toml")).unwrap();
    let header = format!("# [{table}]");
    let mut in_table = false;
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        if line == header {
            (in_table, found) = (true, true);
        } else if line.is_empty() {
            in_table = false;
        }
        let line = match line.strip_prefix("# ") {
            Some(rest) if in_table && !rest.starts_with('#') => rest,
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    assert!(found, "cloud.toml has no commented-out [{table}] table");
    out
}

#[test]
fn commented_proxy_protocol_example_is_valid() {
    let out = with_cloud_table_enabled("proxy_protocol");
    let cloud =
        CloudConfig::from_toml(&out, &example("cloud.toml")).unwrap_or_else(|e| panic!("{e}"));
    let p = cloud.proxy_protocol.expect("[proxy_protocol] enabled");
    let from: Vec<String> = p.from.iter().map(ToString::to_string).collect();
    assert_eq!(from, ["10.0.0.5/32", "10.0.1.0/24"]);
    assert_eq!(p.timeout, DEFAULT_PROXY_PROTOCOL_TIMEOUT);
}

/// The `[events]` example shows every key with its default (and one
/// webhook), so switching it on changes nothing else.
#[test]
fn commented_events_example_is_valid() {
    let out = with_cloud_table_enabled("events");
    let origin = example("cloud.toml");
    let cloud = CloudConfig::from_toml(&out, &origin).unwrap_or_else(|e| panic!("{e}"));
    let state_file = cloud.control.as_ref().map(|c| c.state_file.as_path());
    let mut expected = config::EventsConfig::defaults(state_file);
    expected.webhooks = vec!["http://127.0.0.1:9000/relay-events".to_owned()];
    assert_eq!(cloud.events, expected);
}
