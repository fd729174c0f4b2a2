//! Public API behaviour: defaults, path resolution, token handling and the
//! error type.

use std::path::Path;

use config::*;

const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";

mod common;
use common::fixture;

fn cloud(text: &str) -> Result<CloudConfig, ConfigError> {
    CloudConfig::from_toml(text, Path::new("dir/cloud.toml"))
}

#[test]
fn cloud_defaults_equal_the_constants() {
    let text =
        format!("[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n");
    let c = cloud(&text).unwrap();
    let t = &c.tunnel;
    assert_eq!(t.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
    assert_eq!(t.heartbeat_timeout, DEFAULT_HEARTBEAT_TIMEOUT);
    assert_eq!(t.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(t.max_streams_per_tunnel, DEFAULT_MAX_STREAMS_PER_TUNNEL);
    assert_eq!(t.max_tunnels_per_edge, DEFAULT_MAX_TUNNELS_PER_EDGE);
    assert_eq!(t.ipv6_source_prefix, DEFAULT_IPV6_SOURCE_PREFIX);
    assert_eq!(t.stream_window, DEFAULT_STREAM_WINDOW);
    assert_eq!(t.window_budget, DEFAULT_WINDOW_BUDGET);
    assert_eq!(t.tls, None);
    assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert!(c.mappings.is_empty());
    assert_eq!(*t, TunnelListenConfig::new("127.0.0.1:1".parse().unwrap()));
    // The documented values.
    assert_eq!(DEFAULT_HEARTBEAT_INTERVAL.as_secs(), 2);
    assert_eq!(DEFAULT_HEARTBEAT_TIMEOUT.as_secs(), 6);
    assert_eq!(DEFAULT_HANDSHAKE_TIMEOUT.as_secs(), 10);
    assert_eq!(DEFAULT_MAX_STREAMS_PER_TUNNEL, 4096);
    assert_eq!(DEFAULT_MAX_TUNNELS_PER_EDGE, 8);
    assert_eq!(DEFAULT_IPV6_SOURCE_PREFIX, 64);
    assert_eq!(DEFAULT_STREAM_WINDOW, 1_048_576);
    assert_eq!(DEFAULT_WINDOW_BUDGET, 33_554_432);
    assert_eq!(DEFAULT_SHUTDOWN_GRACE.as_secs(), 30);
}

#[test]
fn edge_defaults_equal_the_constants() {
    let text = format!("cloud_url = \"wss://relay\"\nedge_id = \"e\"\ntoken = \"{TOKEN}\"\n");
    let e = EdgeConfig::from_toml(&text, Path::new("edge.toml")).unwrap();
    assert_eq!(e.tunnels, DEFAULT_TUNNELS);
    assert_eq!(e.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(e.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(
        e.reconnect,
        BackoffConfig { initial: DEFAULT_RECONNECT_INITIAL, max: DEFAULT_RECONNECT_MAX }
    );
    assert_eq!(e.reconnect, BackoffConfig::default());
    assert_eq!(e.ca_file, None);
    assert!(e.public_roots, "without ca_file the public roots are the trust");
    assert!(e.pin_sha256.is_empty() && !e.allow_plaintext && e.warnings.is_empty());
    // With a ca_file, only that file is trusted unless public_roots says so.
    let with_ca =
        EdgeConfig::from_toml(&format!("{text}ca_file = \"ca.pem\"\n"), Path::new("e.toml"));
    assert!(!with_ca.unwrap().public_roots);
    assert_eq!((e.stream_window, e.window_budget), (DEFAULT_STREAM_WINDOW, DEFAULT_WINDOW_BUDGET));
    assert!(e.allow.is_empty());
    assert_eq!(e.cloud_url.to_string(), "wss://relay:443/tunnel");
    assert_eq!(e.token.expose(), TOKEN.as_bytes());
    assert_eq!(DEFAULT_TUNNELS, 2);
    assert_eq!(DEFAULT_CONNECT_TIMEOUT.as_secs(), 5);
    assert_eq!(DEFAULT_RECONNECT_INITIAL.as_millis(), 500);
    assert_eq!(DEFAULT_RECONNECT_MAX.as_secs(), 30);
}

#[test]
fn full_cloud_fixture_values() {
    let dir = fixture("cloud/valid");
    let c = CloudConfig::load(&dir.join("full.toml")).unwrap();
    let tls = c.tunnel.tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.join("certs/cloud.crt"));
    assert_eq!(tls.key, Path::new("/etc/relay/cloud.key"));
    assert_eq!(c.shutdown_grace.as_secs(), 90);
    assert_eq!(c.tunnel.heartbeat_interval.as_millis(), 500);

    let file_token = std::fs::read_to_string(dir.join("edge-a.token")).unwrap();
    let a = c.edge("edge-a").unwrap();
    assert_eq!(a.token.expose(), file_token.trim_end().as_bytes(), "trailing newline trimmed");
    assert!(c.edge("Edge_B.2").is_some());
    assert!(c.edge("edge-c").is_none());

    let ssh = &c.mappings[0];
    let allow: Vec<String> = ssh.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32", "::1/128"]);
    assert_eq!(ssh.max_connections, Some(10));
    assert_eq!(c.mappings[1].target, HostPort { host: "fd00::5".into(), port: 5432 });
    assert_eq!(c.mappings[2].max_connections, None);

    // No token in the debug output of the whole config.
    let debug = format!("{c:?}");
    assert!(!debug.contains(file_token.trim_end()), "token leaked: {debug}");
    assert!(debug.contains("****"));
}

#[test]
fn full_edge_fixture_values() {
    let dir = fixture("edge/valid");
    let e = EdgeConfig::load(&dir.join("full.toml")).unwrap();
    let url = &e.cloud_url;
    assert_eq!(
        (url.tls, url.host.as_str(), url.port, url.path.as_str()),
        (true, "2001:db8::1", 8443, "/relay/tunnel")
    );
    assert_eq!(e.ca_file.as_deref(), Some(dir.join("certs/cloud-ca.pem").as_path()));
    assert_eq!(e.tunnels, 16);
    assert!(e.public_roots && !e.allow_plaintext);
    assert_eq!(e.pin_sha256.len(), 2);
    assert_eq!(e.pin_sha256[1][..3], [0x46, 0x09, 0x0f], "sha256// prefix stripped");
    let allow: Vec<String> = e.allow.iter().map(ToString::to_string).collect();
    assert_eq!(
        allow,
        ["10.0.0.7:22", "db.internal:5432", "[fd00::5]:5432", "10.0.0.0/8:*", "[fd00::]/8:5432"]
    );
    assert!(e.check_resolved);
    assert_eq!(e.reconnect.initial, e.reconnect.max);
    assert!(e.shutdown_grace.is_zero());
    assert!(!format!("{e:?}").contains(std::str::from_utf8(e.token.expose()).unwrap()));

    let partial = EdgeConfig::load(&dir.join("reconnect-partial.toml")).unwrap();
    assert_eq!(partial.reconnect.initial, DEFAULT_RECONNECT_INITIAL);
    assert_eq!(partial.reconnect.max.as_secs(), 120);
}

#[test]
fn error_accessors() {
    let text = format!(
        "[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n\
         [[mappings]]\nname = \"m\"\nlisten = \"127.0.0.1:2\"\nedge = \"x\"\ntarget = \"h:1\"\n"
    );
    let err = cloud(&text).unwrap_err();
    assert_eq!(err.file(), Path::new("dir/cloud.toml"));
    assert_eq!(err.line(), Some(9));
    assert_eq!(err.column(), Some(8));
    assert_eq!(err.message(), "mappings[0].edge: unknown edge or group \"x\" (configured: \"e\")");
    assert_eq!(err.to_string(), format!("dir/cloud.toml:9:8: {}", err.message()));
}

#[test]
fn unreadable_file_has_no_position() {
    let path = fixture("cloud/does-not-exist.toml");
    let err = CloudConfig::load(&path).unwrap_err();
    assert_eq!(err.line(), None);
    assert_eq!(err.file(), path);
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read config file: ", path.display())),
        "{shown}"
    );
}

#[test]
fn token_file_is_relative_to_the_config_dir() {
    let dir = fixture("edge/valid");
    let text = "cloud_url = \"wss://h\"\nedge_id = \"e\"\ntoken_file = \"edge-a.token\"\n";
    // Found next to the (virtual) config file, whatever the current directory.
    assert!(EdgeConfig::from_toml(text, &dir.join("virtual.toml")).is_ok());
    let err = EdgeConfig::from_toml(text, Path::new("/nonexistent/edge.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/edge-a.token"), "{err}");
    assert_eq!(err.line(), Some(3));
}
