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
