//! `[cluster]` through the public API: the example nodes load, defaults,
//! and every rule names file, line and key.

use std::path::Path;
use std::time::Duration;

use config::*;

const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";
const ADMIN: &str = "Zr8cLq2VnW5xT0aJ7dKp3HsB9mYe4GfU";

fn cloud(extra_top: &str, cluster: &str) -> Result<CloudConfig, ConfigError> {
    let text = format!(
        "[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n{extra_top}\
         [control]\nlisten = \"127.0.0.1:2\"\nadmin_token = \"{ADMIN}\"\n\
         state_file = \"/var/lib/relay/state.json\"\n{cluster}"
    );
    CloudConfig::from_toml(&text, Path::new("/etc/relay/cloud.toml"))
}

const NODE: &str = "[cluster]\nnode_id = \"a\"\nadvertise = \"wss://a.example.com/tunnel\"\n\
                    etcd_endpoints = [\"http://127.0.0.1:2379\"]\n";

#[test]
fn the_example_nodes_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster");
    for (n, ip) in [("a", "127.0.0.11"), ("b", "127.0.0.12"), ("c", "127.0.0.13")] {
        let c = CloudConfig::load(&dir.join(format!("node-{n}.toml")))
            .unwrap_or_else(|e| panic!("node-{n}.toml: {e}"));
        let cluster = c.cluster.expect("[cluster]");
        assert_eq!(cluster.node_id, n);
        assert_eq!(cluster.public_ip, Some(ip.parse().unwrap()));
        assert!(c.proxy_protocol.is_some());
    }
}

#[test]
fn defaults() {
    let c = cloud("", NODE).unwrap().cluster.unwrap();
    assert_eq!(c.etcd_prefix, DEFAULT_CLUSTER_PREFIX);
    assert_eq!(c.lease_ttl, Duration::from_secs(5));
    assert_eq!(c.apply_wait, DEFAULT_CLUSTER_APPLY_WAIT);
    assert_eq!(c.control_url.as_deref(), Some("http://127.0.0.1:2"));
    assert_eq!(c.local_copy, Path::new("/var/lib/relay").join(DEFAULT_CLUSTER_LOCAL_COPY));
    assert_eq!(c.advertise.to_string(), "wss://a.example.com:443/tunnel");
    assert!(cloud("", "").unwrap().cluster.is_none(), "alone by default");
}

fn error(extra_top: &str, cluster: &str) -> String {
    cloud(extra_top, cluster).map(|_| ()).expect_err("refused").to_string()
}

#[test]
fn each_rule_names_file_line_and_key() {
    let cases = [
        (format!("{NODE}lease_ttl = \"1s\"\n"), ":14:", "cluster.lease_ttl"),
        (format!("{NODE}lease_ttl = \"2500ms\"\n"), ":14:", "whole seconds"),
        (format!("{NODE}etcd_prefix = \"relay\"\n"), ":14:", "cluster.etcd_prefix"),
        (format!("{NODE}etcd_user = \"relay\"\n"), ":14:", "needs etcd_password_file"),
        (format!("{NODE}etcd_cert_file = \"c.pem\"\n"), ":14:", "needs etcd_key_file"),
        (format!("{NODE}etcd_ca_file = \"ca.pem\"\n"), ":13:", "must be https://"),
        (format!("{NODE}public_ip = \"nope\"\n"), ":14:", "cluster.public_ip"),
        (format!("{NODE}colour = \"blue\"\n"), ":14:", "colour"),
        (NODE.replace("wss://a.example.com/tunnel", "http://a"), ":12:", "cluster.advertise"),
        (NODE.replace("\"http://127.0.0.1:2379\"", ""), ":13:", "at least one etcd URL"),
        (NODE.replace("http://127.0.0.1:2379", "127.0.0.1:2379"), ":13:", "etcd_endpoints[0]"),
        (NODE.replace("node_id = \"a\"", "node_id = \"a b\""), ":11:", "cluster.node_id"),
    ];
    for (cluster, line, says) in cases {
        let e = error("", &cluster);
        assert!(
            e.contains("/etc/relay/cloud.toml") && e.contains(line) && e.contains(says),
            "{cluster}\n=> {e}"
        );
    }
}

#[test]
fn a_node_needs_control_and_keeps_no_mappings_in_its_file() {
    let text = format!(
        "[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n{NODE}"
    );
    let e = CloudConfig::from_toml(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("needs a [control] table"), "{e}");
    let mapping =
        "[[mappings]]\nname = \"web\"\nlisten = \"127.0.0.1:3\"\nedge = \"e\"\ntarget = \"h:1\"\n";
    let e = error(mapping, NODE);
    assert!(e.contains("mappings[0]") && e.contains("live in etcd"), "{e}");
}
