//! `[control]`, `[log]`, `edge_ids` and `MappingConfig::from_parts` through
//! the public API.

use std::path::Path;

use config::*;

const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";

mod common;
use common::fixture;

fn cloud(extra: &str) -> Result<CloudConfig, ConfigError> {
    let text = format!(
        "[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n{extra}"
    );
    CloudConfig::from_toml(&text, Path::new("/etc/relay/cloud.toml"))
}

#[test]
fn control_and_log_fixture_values() {
    let dir = fixture("cloud/valid");
    let c = CloudConfig::load(&dir.join("control-and-log.toml")).unwrap_or_else(|e| panic!("{e}"));
    let control = c.control.as_ref().unwrap();
    assert_eq!(control.listen, "127.0.0.1:9090".parse().unwrap());
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    assert_eq!(control.admin_token.expose(), admin.trim_end().as_bytes());
    assert_eq!(control.state_file, dir.join("state/relay-cloud-state.json"));
    assert_eq!(control.request_timeout, std::time::Duration::from_secs(5));
    assert_eq!(control.max_connections, 16);
    let log = c.log.as_ref().unwrap();
    assert_eq!(log.dir, dir.join("logs"));
    assert_eq!(log.file_prefix, "cloud.main_1");
    assert_eq!(log.rotation, LogRotation::Hourly);
    assert_eq!(log.max_files, Some(48));
    assert!(!format!("{c:?}").contains(admin.trim_end()), "admin token leaked");
    assert_eq!(c.edge_ids().collect::<Vec<_>>(), ["edge-a", "Edge_B.2"]);
}

#[test]
fn control_and_log_defaults() {
    let c = CloudConfig::load(&fixture("cloud/valid/control-defaults.toml")).unwrap();
    let control = c.control.unwrap();
    assert_eq!(control.listen, DEFAULT_CONTROL_LISTEN);
    assert_eq!(control.listen, "127.0.0.1:7070".parse().unwrap());
    assert_eq!(control.state_file, fixture("cloud/valid").join(DEFAULT_CONTROL_STATE_FILE));
    assert_eq!(DEFAULT_CONTROL_STATE_FILE, "relay-cloud-state.json");
    assert_eq!(control.request_timeout, DEFAULT_CONTROL_REQUEST_TIMEOUT);
    assert_eq!(control.max_connections, DEFAULT_CONTROL_MAX_CONNECTIONS);
    let log = c.log.unwrap();
    assert_eq!(log.dir, Path::new("/var/log/relay"));
    assert_eq!(log.file_prefix, DEFAULT_CLOUD_LOG_FILE_PREFIX);
    assert_eq!(DEFAULT_CLOUD_LOG_FILE_PREFIX, "relay-cloud");
    assert_eq!(log.rotation, DEFAULT_LOG_ROTATION);
    assert_eq!(DEFAULT_LOG_ROTATION, LogRotation::Daily);
    assert_eq!(log.max_files, None);

    // Both tables are optional.
    let bare = cloud("").unwrap();
    assert!(bare.control.is_none() && bare.log.is_none());
}

#[test]
fn edge_log() {
    let dir = fixture("edge/valid");
    let e = EdgeConfig::load(&dir.join("log.toml")).unwrap();
    let log = e.log.unwrap();
    assert_eq!(log.dir, dir.join("../logs"));
    assert_eq!(
        (log.file_prefix.as_str(), log.rotation, log.max_files),
        ("edge-a", LogRotation::Never, Some(1))
    );

    let text = format!(
        "cloud_url = \"wss://h\"\nedge_id = \"e\"\ntoken = \"{TOKEN}\"\n[log]\ndir = \"l\"\n"
    );
    let log = EdgeConfig::from_toml(&text, Path::new("/etc/relay/edge.toml")).unwrap().log.unwrap();
    assert_eq!(log.file_prefix, DEFAULT_EDGE_LOG_FILE_PREFIX);
    assert_eq!(DEFAULT_EDGE_LOG_FILE_PREFIX, "relay-edge");
    assert_eq!(log.dir, Path::new("/etc/relay/l"));
    assert!(EdgeConfig::load(&dir.join("minimal.toml")).unwrap().log.is_none());
}

#[test]
fn control_listen_clashes() {
    let admin = "admin_token = \"Zk3pQ8rT1vW6yB0nM4cX7sL2dF9gH5jA\"";
    let err = cloud(&format!("[control]\nlisten = \"0.0.0.0:1\"\n{admin}\n")).unwrap_err();
    assert_eq!(
        err.message(),
        "control.listen: \"0.0.0.0:1\" conflicts with tunnel.listen \"127.0.0.1:1\""
    );
    assert_eq!((err.line(), err.column()), (Some(7), Some(10)));
    let mapping =
        "[[mappings]]\nname = \"m\"\nlisten = \"[::]:2\"\nedge = \"e\"\ntarget = \"h:1\"\n";
    let err = cloud(&format!("{mapping}[control]\nlisten = \"[::1]:2\"\n{admin}\n")).unwrap_err();
    assert!(
        err.message().starts_with("control.listen: \"[::1]:2\" conflicts with mappings[0]"),
        "{err}"
    );
    // Port 0 and other addresses never clash.
    assert!(cloud(&format!("[control]\nlisten = \"127.0.0.1:0\"\n{admin}\n")).is_ok());
    assert!(cloud(&format!("[control]\nlisten = \"127.0.0.2:1\"\n{admin}\n")).is_ok());
}

#[test]
fn admin_token_must_differ_from_edge_tokens() {
    let err = cloud(&format!("[control]\nadmin_token = \"{TOKEN}\"\n")).unwrap_err();
    assert_eq!(
        err.message(),
        "control.admin_token: admin token must differ from every edge token (same as edges[0])"
    );
    assert_eq!(err.line(), Some(7));
}

/// `from_parts` gives the message a `[[mappings]]` table gets for the same
/// value, without the position and key path.
#[test]
fn from_parts_messages_match_the_file() {
    let cases = [
        ("name", "name = \"a b\"", ("a b", "0.0.0.0:2", "e", "h:1", "10.0.0.1")),
        ("listen", "listen = \"1.2.3\"", ("m", "1.2.3", "e", "h:1", "10.0.0.1")),
        ("target", "target = \"h\"", ("m", "0.0.0.0:2", "e", "h", "10.0.0.1")),
        ("allow", "allow = [\"10.0.0.0/33\"]", ("m", "0.0.0.0:2", "e", "h:1", "10.0.0.0/33")),
    ];
    for (field, line, (name, listen, edge, target, allow)) in cases {
        let mut keys = vec![
            "name = \"m\"".to_owned(),
            "listen = \"0.0.0.0:2\"".to_owned(),
            "edge = \"e\"".to_owned(),
            "target = \"h:1\"".to_owned(),
            "allow = [\"10.0.0.1\"]".to_owned(),
        ];
        for k in &mut keys {
            if k.starts_with(&format!("{field} ")) {
                *k = line.to_owned();
            }
        }
        let file = cloud(&format!("[[mappings]]\n{}\n", keys.join("\n"))).unwrap_err();
        let api = MappingConfig::from_parts(name, listen, edge, target, &[allow.to_owned()], None)
            .unwrap_err();
        assert_eq!(api.field, field);
        assert!(file.message().ends_with(&format!(": {}", api.message)), "{file} vs {api}");
    }
    let good = MappingConfig::from_parts("m", "0.0.0.0:2", "e", "h:1", &[], Some(3)).unwrap();
    let file = cloud(
        "[[mappings]]\nname = \"m\"\nlisten = \"0.0.0.0:2\"\nedge = \"e\"\ntarget = \"h:1\"\n\
         max_connections = 3\n",
    )
    .unwrap();
    assert_eq!(file.mappings, [good]);
}
