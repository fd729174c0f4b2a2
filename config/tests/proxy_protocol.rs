//! `[proxy_protocol]` through the public API: the fixture's values, the
//! default timeout, and the range's ends.

use std::path::Path;
use std::time::Duration;

use config::*;

mod common;
use common::fixture;

const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";

fn cloud(extra: &str) -> Result<CloudConfig, ConfigError> {
    let text = format!(
        "[tunnel]\nlisten = \"127.0.0.1:1\"\n[[edges]]\nid = \"e\"\ntoken = \"{TOKEN}\"\n{extra}"
    );
    CloudConfig::from_toml(&text, Path::new("/etc/relay/cloud.toml"))
}

#[test]
fn fixture_values() {
    let c = CloudConfig::load(&fixture("cloud/valid/proxy-protocol.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = c.proxy_protocol.unwrap();
    let from: Vec<String> = p.from.iter().map(ToString::to_string).collect();
    assert_eq!(from, ["10.0.0.5/32", "10.0.1.0/24", "fd00::/64"]);
    assert_eq!(p.timeout, Duration::from_secs(2));
    assert!(p.trusts("10.0.1.200".parse().unwrap()) && !p.trusts("10.0.0.6".parse().unwrap()));
}

#[test]
fn optional_with_a_default_timeout() {
    assert_eq!(cloud("").unwrap().proxy_protocol, None);
    let p = cloud("[proxy_protocol]\nfrom = [\"::1\"]\n").unwrap().proxy_protocol.unwrap();
    assert_eq!(p.timeout, DEFAULT_PROXY_PROTOCOL_TIMEOUT);
    assert_eq!(DEFAULT_PROXY_PROTOCOL_TIMEOUT, Duration::from_secs(5));
}

#[test]
fn timeout_range_ends() {
    for (written, ok) in [("1ms", true), ("60s", true), ("0s", false), ("60001ms", false)] {
        let got = cloud(&format!("[proxy_protocol]\nfrom = [\"::1\"]\ntimeout = \"{written}\"\n"));
        match (got, ok) {
            (Ok(c), true) => {
                let t = c.proxy_protocol.unwrap().timeout;
                assert!(PROXY_PROTOCOL_TIMEOUT_RANGE.contains(&t), "{written}");
            }
            (Err(e), false) => {
                let shown = e.to_string();
                assert!(
                    shown.starts_with("/etc/relay/cloud.toml:8:11: proxy_protocol.timeout: ")
                        && shown.contains(&format!("\"{written}\" is out of range")),
                    "{shown}"
                );
            }
            (got, _) => panic!("{written}: {got:?}"),
        }
    }
}

const MAPPING: &str = "[[mappings]]\nname = \"m\"\nlisten = \"127.0.0.1:2\"\nedge = \"e\"\n\
                       target = \"h:1\"\n";

#[test]
fn a_mapping_may_send_a_v1_or_v2_header_to_its_target() {
    let c = cloud(&format!("{MAPPING}proxy_protocol = \"v2\"\n")).unwrap();
    assert_eq!(c.mappings[0].proxy_protocol, Some(ProxyVersion::V2));
    let c = cloud(&format!("{MAPPING}proxy_protocol = \"v1\"\n")).unwrap();
    assert_eq!(c.mappings[0].proxy_protocol, Some(ProxyVersion::V1));
    assert_eq!(cloud(MAPPING).unwrap().mappings[0].proxy_protocol, None);
}

#[test]
fn a_wrong_header_version_or_a_probe_expectation_beside_it_names_line_and_key() {
    let err = cloud(&format!("{MAPPING}proxy_protocol = \"v3\"\n")).unwrap_err();
    assert_eq!(err.line(), Some(11), "{err}");
    assert!(err.message().contains("mappings[0].proxy_protocol"), "{err}");
    assert!(err.message().contains("`v1`, `v2`") || err.message().contains("v1"), "{err}");
    let text = format!(
        "{MAPPING}proxy_protocol = \"v2\"\nprobe_interval = \"10s\"\nprobe_expect = \"SSH-\"\n"
    );
    let err = cloud(&text).unwrap_err();
    assert_eq!(err.line(), Some(13), "{err}");
    assert!(
        err.message().starts_with("mappings[0].probe_expect: not with proxy_protocol"),
        "{err}"
    );
}

fn shared(name: &str, listen: &str, host: Option<&str>) -> String {
    let host = host.map(|h| format!("host = \"{h}\"\n")).unwrap_or_default();
    format!(
        "[[mappings]]\nname = \"{name}\"\nlisten = \"{listen}\"\nedge = \"e\"\ntarget = \"h:1\"\n{host}"
    )
}

#[test]
fn mappings_share_a_listen_address_only_when_each_names_a_different_host() {
    let ok = [
        shared("a", "0.0.0.0:443", Some("a.example.com")),
        shared("w", "0.0.0.0:443", Some("*.example.com")),
        shared("d", "0.0.0.0:443", Some("*")),
    ]
    .concat();
    let c = cloud(&ok).unwrap();
    let hosts: Vec<String> =
        c.mappings.iter().map(|m| m.host.as_ref().unwrap().to_string()).collect();
    assert_eq!(hosts, ["a.example.com", "*.example.com", "*"]);

    let same = [
        shared("a", "0.0.0.0:443", Some("a.example.com")),
        shared("b", "0.0.0.0:443", Some("A.example.com")),
    ]
    .concat();
    let err = cloud(&same).unwrap_err();
    assert!(err.message().contains("routes the same host"), "{err}");

    let lone =
        [shared("a", "0.0.0.0:443", Some("a.example.com")), shared("b", "0.0.0.0:443", None)]
            .concat();
    let err = cloud(&lone).unwrap_err();
    assert!(err.message().contains("share a listen address only when each names a host"), "{err}");

    let overlapping = [
        shared("a", "0.0.0.0:443", Some("a.example.com")),
        shared("b", "127.0.0.1:443", Some("b.example.com")),
    ]
    .concat();
    assert!(cloud(&overlapping).is_err(), "an address written differently does not share");

    let err = cloud(&shared("a", "0.0.0.0:443", Some("a.example.com:443"))).unwrap_err();
    assert!(
        err.message().contains("mappings[0].host") && err.message().contains("no port"),
        "{err}"
    );
}

#[test]
fn a_traffic_policy_reads_counts_and_rates_and_a_bad_one_names_its_key() {
    let text = format!(
        "{MAPPING}max_connections_per_client = 4\nnew_connections_per_client = 10\n\
         rate_limit_in = \"10MiB\"\nrate_limit_out = 1048576\n"
    );
    let p = cloud(&text).unwrap().mappings[0].policy;
    assert_eq!(p.max_connections_per_client, Some(4));
    assert_eq!(p.new_connections_per_client, Some(10));
    assert_eq!((p.rate_limit_in, p.rate_limit_out), (Some(10 << 20), Some(1 << 20)));
    let err = cloud(&format!("{MAPPING}rate_limit_out = \"10 furlongs\"\n")).unwrap_err();
    assert_eq!(err.line(), Some(11), "{err}");
    assert!(
        err.message().contains("mappings[0].rate_limit_out")
            && err.message().contains("invalid rate"),
        "{err}"
    );
    let err = cloud(&format!("{MAPPING}max_connections_per_client = 0\n")).unwrap_err();
    assert!(
        err.message().starts_with("mappings[0].max_connections_per_client: must be at least 1"),
        "{err}"
    );
}
