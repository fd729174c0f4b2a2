//! Enrolment end to end, with the real binaries over TLS: `relayctl edges
//! enroll` makes a code, `relay-edge enroll` redeems it (checking the
//! cloud's key against the code's pin first) and writes a config that
//! `relay-edge --config` runs as is. A code works once; unknown, expired
//! and used codes, a cloud with another key, and guessing each get their
//! own answer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use agent_cloud::Cloud;
use e2e_tests::{ADMIN_TOKEN, Api, bin, cloud_config, echo_server, eventually, free_port, serves};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(15);

/// A self-signed certificate for 127.0.0.1, and a cloud with TLS and a
/// control API using it.
struct Site {
    dir: tempfile::TempDir,
    cloud: Cloud,
    api: Api,
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let toml = format!(
            "[control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             state_file = \"{}\"\n\
             [tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\n\
             [tunnel.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            p("state.json"),
            p("cert.pem"),
            p("key.pem"),
        );
        let cloud = Cloud::start(cloud_config(&toml)).await.expect("TLS cloud starts");
        let api = Api::new(cloud.control_addr().unwrap(), Some(ADMIN_TOKEN));
        Site { dir, cloud, api }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/tunnel", self.cloud.tunnel_addr().port())
    }

    /// `relayctl edges enroll ...` with `-o json`: the ticket.
    async fn enroll(&self, args: &[&str]) -> api::EnrolmentTicket {
        let control = self.cloud.control_addr().unwrap();
        let mut all = vec!["edges", "enroll"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = relayctl(control, &self.path("admin-token"), &all).await;
        assert!(out.status.success(), "relayctl failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("a ticket")
    }
}

async fn relayctl(control: SocketAddr, token_file: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(bin("relayctl"));
    command
        .args(["--endpoint", &format!("http://{control}"), "--token-file"])
        .arg(token_file)
        .args(args)
        .env_remove("RELAYCTL_TOKEN")
        .env("HOME", "/nonexistent");
    run(command).await
}

/// `relay-edge enroll` into `dir`.
async fn edge_enroll(url: &str, code: &str, dir: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(bin("relay-edge"));
    command.args(["enroll", "--cloud", url, "--code", code, "--dir"]).arg(dir).args(extra);
    run(command).await
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run")).await.unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Kills the edge process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn events(api: &Api) -> Vec<Value> {
    let (status, body) = api.call("GET", "/v1/events", None).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_enrols_over_tls_with_one_command_on_each_side_and_its_code_works_once() {
    let site = Site::start().await;
    let echo = echo_server().await;
    let started = Instant::now();
    let ticket = site.enroll(&["site-b", "--group", "pool", "--ttl", "10m"]).await;
    assert_eq!(ticket.edge_id, "site-b");
    assert_eq!(ticket.cloud_url, site.url());
    let code = proto::EnrolmentCode::parse(&ticket.code).expect("a code");
    assert!(code.pin.is_some(), "a TLS cloud's code names its key: {}", ticket.code);
    assert!(
        ticket.command.starts_with(&format!(
            "relay-edge enroll --cloud {} --code {}",
            site.url(),
            ticket.code
        )),
        "{}",
        ticket.command
    );
    // The edge exists, with no token anyone holds, until the code is used.
    let (status, view) = site.api.call("GET", "/v1/edges/site-b", None).await;
    assert_eq!(status, 200, "{view}");
    assert!(view["enrolment"]["expires_unix_ms"].as_u64().is_some(), "{view}");
    assert_eq!(view["groups"], json!(["pool"]));
    // The state file keeps a digest of the secret, never the secret.
    let state = std::fs::read_to_string(site.path("state.json")).unwrap();
    let secret = ticket.code.split('.').nth(1).unwrap();
    assert!(!state.contains(secret), "{state}");
    assert!(state.contains(&proto::secret_digest(&code.secret)), "{state}");

    let edge_dir = site.path("edge");
    let out =
        edge_enroll(&site.url(), &ticket.code, &edge_dir, &["--allow", &echo.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("enrolled {:?} after relayctl was started", started.elapsed());
    assert!(text(&out).contains("enrolled as edge site-b"), "{}", text(&out));
    let token = std::fs::read_to_string(edge_dir.join("token")).unwrap();
    assert_eq!(token.trim().len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(edge_dir.join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let written = std::fs::read_to_string(edge_dir.join("edge.toml")).unwrap();
    assert!(written.contains("edge_id = \"site-b\""), "{written}");
    assert!(written.contains("ca_file = \"cloud-ca.pem\""), "{written}");
    assert!(written.contains(&format!("allow = [\"{echo}\"]")), "{written}");
    assert!(!written.contains(token.trim()), "the token is in its own file: {written}");
    let (_, view) = site.api.call("GET", "/v1/edges/site-b", None).await;
    assert!(view["enrolment"]["redeemed_unix_ms"].as_u64().is_some(), "{view}");

    // Used once: a second redemption is refused, on both sides, and writes
    // nothing.
    let again = site.path("again");
    let out = edge_enroll(&site.url(), &ticket.code, &again, &[]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("CodeUsed") && text(&out).contains("used already"),
        "{}",
        text(&out)
    );
    assert!(!again.join("token").exists());

    // The written config runs as it is, and carries a mapping to the group.
    let listen = free_port();
    let body = json!({"name": "web", "listen": listen.to_string(), "edge": "pool",
        "target": echo.to_string()});
    let (status, answer) = site.api.call("POST", "/v1/mappings", Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    let child = Command::new(bin("relay-edge"))
        .arg("--config")
        .arg(edge_dir.join("edge.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay-edge runs");
    let _edge = Running(child);
    assert!(eventually(WITHIN, || serves(listen)).await, "the enrolled edge never carried web");
    let kinds: Vec<String> = events(&site.api)
        .await
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    for kind in ["enrolment_code_made", "edge_enrolled", "tunnel_up"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} event in {kinds:?}");
    }
    site.cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_and_misdirected_codes_each_get_their_own_answer_and_guessing_is_limited() {
    let site = Site::start().await;
    let dir = site.path("edge");
    let good = site.enroll(&["site-c"]).await;
    let code = proto::EnrolmentCode::parse(&good.code).unwrap();

    // A cloud with another key: the edge stops before sending the code,
    // and the code still works afterwards.
    let other_key = proto::EnrolmentCode { secret: code.secret, pin: Some([7; 32]) }.encode();
    let out = edge_enroll(&site.url(), &other_key, &dir, &[]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("not the one the enrolment code names"), "{}", text(&out));
    assert!(text(&out).contains("the code was not sent"), "{}", text(&out));
    // A code for a TLS cloud needs its pin; a plain URL for a pinned code
    // is refused before dialling.
    let plain = good.cloud_url.replacen("wss://", "ws://", 1);
    let out = edge_enroll(&plain, &good.code, &dir, &[]).await;
    assert!(!out.status.success() && text(&out).contains("plain ws://"), "{}", text(&out));
    // A bad allowlist entry is found before the code is spent.
    let out = edge_enroll(&site.url(), &good.code, &dir, &["--allow", "no port"]).await;
    assert!(!out.status.success() && text(&out).contains("still works"), "{}", text(&out));
    let out = edge_enroll(&site.url(), &good.code, &dir, &[]).await;
    assert!(out.status.success(), "the code survived the failures: {}", text(&out));
    assert!(std::fs::read_to_string(dir.join("edge.toml")).unwrap().contains("allow = []"));

    // Unknown: a code this cloud never made (with its real pin).
    let unknown = proto::EnrolmentCode { secret: [0x5a; 16], pin: code.pin }.encode();
    let out = edge_enroll(&site.url(), &unknown, &site.path("u"), &[]).await;
    assert!(text(&out).contains("UnknownCode"), "{}", text(&out));
    // Expired.
    let short = site.enroll(&["site-d", "--ttl", "1s"]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let out = edge_enroll(&site.url(), &short.code, &site.path("d"), &[]).await;
    assert!(text(&out).contains("CodeExpired") && text(&out).contains("expired"), "{}", text(&out));

    // Guessing: after five failures in a burst the source is refused
    // without the code being looked at, even a good one.
    let fresh = site.enroll(&["site-e"]).await;
    let mut refused = Vec::new();
    for i in 0..4u8 {
        let guess = proto::EnrolmentCode { secret: [i; 16], pin: code.pin }.encode();
        refused.push(text(&edge_enroll(&site.url(), &guess, &site.path("g"), &[]).await));
    }
    assert!(refused[..2].iter().all(|t| t.contains("UnknownCode")), "{refused:?}");
    assert!(refused.last().is_some_and(|t| t.contains("RateLimited")), "{refused:?}");
    let out = edge_enroll(&site.url(), &fresh.code, &site.path("e"), &[]).await;
    assert!(text(&out).contains("RateLimited"), "{}", text(&out));
    let (_, view) = site.api.call("GET", "/v1/edges/site-e", None).await;
    assert!(view["enrolment"]["redeemed_unix_ms"].is_null(), "not spent while limited: {view}");
    site.cloud.shutdown().await;
}
