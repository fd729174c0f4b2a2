//! The tunnel over TLS: a certificate the edge trusts works; one it does
//! not trust is refused, with no fallback to plain WebSocket.

use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{TOKEN, cloud_config, echo_server, edge_config, eventually, serves};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A self-signed certificate for 127.0.0.1 and localhost.
    fn new() -> Pki {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generate cert");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem())
            .expect("write key");
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

async fn tls_cloud(pki: &Pki, target: &str) -> Cloud {
    let toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\n[tunnel.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n\
         [[mappings]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{target}\"\n",
        pki.path("cert.pem"),
        pki.path("key.pem")
    );
    Cloud::start(cloud_config(&toml)).await.expect("cloud starts with TLS")
}

fn tls_edge(cloud: &Cloud, target: &str, ca_file: Option<&str>) -> Edge {
    let ca = ca_file.map(|p| format!("ca_file = \"{p}\"\n")).unwrap_or_default();
    let toml = format!(
        "cloud_url = \"wss://127.0.0.1:{}/tunnel\"\nedge_id = \"e1\"\ntoken = \"{TOKEN}\"\n{ca}\
         allow = [\"{target}\"]\n[reconnect]\ninitial = \"50ms\"\nmax = \"200ms\"\n",
        cloud.tunnel_addr().port()
    );
    Edge::start(edge_config(&toml)).expect("edge starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_over_tls_with_a_trusted_certificate_serves() {
    let pki = Pki::new();
    let echo = echo_server().await.to_string();
    let cloud = tls_cloud(&pki, &echo).await;
    let edge = tls_edge(&cloud, &echo, Some(&pki.path("cert.pem")));
    let public = cloud.mapping_addr("echo").expect("listening");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "no service over wss");
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_without_fallback() {
    let pki = Pki::new();
    let echo = echo_server().await.to_string();
    let cloud = tls_cloud(&pki, &echo).await;
    // No ca_file: the self-signed certificate is not trusted.
    let edge = tls_edge(&cloud, &echo, None);
    let public = cloud.mapping_addr("echo").expect("listening");
    // The edge did dial, and its dials fail on the certificate: an edge
    // that never dialled, or failed for another reason, does not pass.
    let certificate_refused = || async {
        edge.last_dial_error().is_some_and(|e| e.contains("TLS") && e.contains("certificate"))
    };
    assert!(
        eventually(Duration::from_secs(10), certificate_refused).await,
        "no dial failed on the certificate; last dial error: {:?}",
        edge.last_dial_error()
    );
    // Several redial attempts fit in this window (backoff max 200 ms); none
    // may produce a tunnel, over TLS or otherwise.
    assert!(!eventually(Duration::from_secs(2), || async { cloud.live_tunnels("e1") > 0 }).await);
    assert_eq!(edge.live_tunnels(), 0);
    assert!(!serves(public).await);
    let last = edge.last_dial_error().unwrap_or_default();
    assert!(last.contains("certificate"), "later dials failed otherwise: {last}");
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// An edge config for `e1` dialling the TLS `cloud`, trusting `ca_file`
/// and pinning `pins`.
fn pinned_edge_toml(cloud: &Cloud, target: &str, ca_file: &str, pins: &[&str]) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "cloud_url = \"wss://127.0.0.1:{}/tunnel\"\nedge_id = \"e1\"\ntoken = \"{TOKEN}\"\n\
         ca_file = \"{ca_file}\"\npin_sha256 = [{}]\nallow = [\"{target}\"]\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"200ms\"\n",
        cloud.tunnel_addr().port(),
        pins.join(", ")
    )
}

/// The `pin_sha256` that `relay-cloud --check` prints for the PKI's
/// certificate.
fn printed_pin(pki: &Pki) -> String {
    let config_path = pki.dir.path().join("cloud.toml");
    std::fs::write(
        &config_path,
        "[tunnel]\nlisten = \"127.0.0.1:0\"\n[tunnel.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [[edges]]\nid = \"e1\"\ntoken_file = \"e1.token\"\n",
    )
    .expect("write config");
    std::fs::write(pki.dir.path().join("e1.token"), TOKEN).expect("write token");
    let out = std::process::Command::new(e2e_tests::bin("relay-cloud"))
        .arg("--config")
        .arg(&config_path)
        .arg("--check")
        .output()
        .expect("run relay-cloud --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let pin = stdout
        .split("pin_sha256 = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no pin_sha256 in {stdout}"));
    assert_eq!(pin.len(), 44, "{stdout}");
    pin.to_owned()
}

/// The pin `relay-cloud --check` prints for the cloud's certificate: the
/// edge that pins it gets its tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_the_cloud_prints_is_accepted() {
    let pki = Pki::new();
    let echo = echo_server().await.to_string();
    let cloud = tls_cloud(&pki, &echo).await;
    let pin = printed_pin(&pki);
    let toml = pinned_edge_toml(&cloud, &echo, &pki.path("cert.pem"), &[&pin]);
    let edge = Edge::start(edge_config(&toml)).expect("edge starts");
    let public = cloud.mapping_addr("echo").expect("listening");
    assert!(
        eventually(Duration::from_secs(10), || serves(public)).await,
        "no service with the pin"
    );
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// A certificate the edge trusts (it is the `ca_file`) but whose key is
/// not pinned is refused, and the edge says why, with the key's pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_certificate_with_an_unpinned_key_is_refused_and_says_why() {
    let pki = Pki::new();
    let echo = echo_server().await.to_string();
    let cloud = tls_cloud(&pki, &echo).await;
    let other_key = "lYe+fSQ7CdL5HqDlnnQ79CiQFQ1e+0HaQIKxo4u1FJA=";
    let toml = pinned_edge_toml(&cloud, &echo, &pki.path("cert.pem"), &[other_key]);
    let mut edge = e2e_tests::Agent::spawn("relay-edge", &toml);
    let line = edge
        .wait_for_log(
            &["tunnel not established", "matches no configured pin_sha256"],
            Duration::from_secs(10),
        )
        .await;
    let pin = printed_pin(&pki);
    assert!(line.contains(&pin), "the refusal names the key's pin {pin}: {line}");
    assert_eq!(cloud.live_tunnels("e1"), 0);
    let public = cloud.mapping_addr("echo").expect("listening");
    assert!(!serves(public).await);
    cloud.shutdown().await;
}
