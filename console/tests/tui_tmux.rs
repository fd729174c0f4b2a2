//! The real `relayctl tui` in a real terminal: tmux runs it against real
//! agents on loopback; one test types into the add form, waits for the
//! mapping to be listed, uses it, and quits; another enrols a new site
//! from the TUI and runs the real `relay-edge` with the code it shows.
//!
//! Without tmux it fails under `CI=true`, and elsewhere skips with a
//! message saying what to install (`e2e_tests::skip`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, TOKEN, cloud_config, cloud_toml_with_control, echo_once, echo_server, edge_config,
    edge_toml, free_port,
};

/// How long any one thing may take to show up on the screen.
const WAIT: Duration = Duration::from_secs(20);
const SESSION: &str = "relayctl";

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The visible screen only (not the scrollback).
    fn visible(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", SESSION]).stdout)
            .into_owned()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-S", "-", "-t", SESSION]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    fn text(&self, text: &str) {
        self.ok(&["send-keys", "-t", SESSION, "-l", text]);
    }

    /// Polls the screen until `done` holds; panics with the screen if it
    /// does not within [`WAIT`].
    async fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{what}: not within {WAIT:?}; screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the pane's process has exited (its terminal closed).
    fn pane_dead(&self) -> bool {
        let out = self.run(&["list-panes", "-t", SESSION, "-F", "#{pane_dead}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

fn tmux_installed() -> bool {
    Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success())
}

fn line_with<'a>(screen: &'a str, words: &[&str]) -> Option<&'a str> {
    screen.lines().find(|l| words.iter().all(|w| l.contains(w)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_mapping_in_the_tui_and_use_it() {
    if !tmux_installed() {
        let why = "tmux is not installed (apt-get install -y tmux)";
        e2e_tests::skip::cannot_run("tui_tmux::add_a_mapping_in_the_tui_and_use_it", why);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = echo_server().await;
    let toml = cloud_toml_with_control("127.0.0.1:0", &[], &dir.path().join("state.json"));
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write token");
    let conf = dir.path().join("tmux.conf");
    // Keep the pane after the process exits, to read what it printed.
    std::fs::write(&conf, "set -g remain-on-exit on\n").expect("write tmux.conf");
    let endpoint = format!("http://{}", cloud.control_addr().expect("control API"));
    let public = free_port();

    let tmux = Tmux { socket: format!("relayctl-test-{}", std::process::id()) };
    start(&tmux, &conf, &endpoint, &token_file);
    let edge_up = |s: &str| s.lines().any(|l| l.starts_with("e1 ") && l.contains("connected"));
    tmux.wait_for("edge e1 connected", &edge_up).await;

    tmux.keys(&["a"]);
    tmux.wait_for("the add form", |s| s.contains("Add mapping")).await;
    tmux.text("web");
    tmux.keys(&["Tab"]);
    tmux.text(&public.to_string());
    tmux.keys(&["Tab", "Tab"]); // the edge field starts at e1, the only edge
    tmux.text(&echo.to_string());
    tmux.keys(&["Tab", "Tab", "Enter"]); // allow and host left empty; Enter on the last adds
    let added = format!("added web on {public}");
    let screen = tmux.wait_for(&added, |s| s.contains(&added)).await;
    assert!(!screen.contains("Add mapping"), "form still open:\n{screen}");
    let screen = tmux
        .wait_for("web listed as active", |s| {
            line_with(s, &["web", "active", &public.to_string()]).is_some()
        })
        .await;
    assert!(edge_up(&screen), "{screen}");

    assert_echo(public).await;

    tmux.keys(&["q"]);
    let screen = tmux.wait_for("relayctl to exit", |s| s.contains("relayctl exited with")).await;
    assert!(screen.contains("relayctl exited with 0"), "{screen}");
    assert!(!screen.contains("hybrid relay"), "the alternate screen was not left:\n{screen}");
    let until = tokio::time::Instant::now() + WAIT;
    while !tmux.pane_dead() {
        assert!(tokio::time::Instant::now() < until, "the pane's process is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tmux);
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// Starts relayctl in a detached session through `sh`, which reports its
/// exit status on the screen once relayctl has left the alternate screen.
/// (tmux itself can miss the exit status: with libutempter, a SIGCHLD that
/// arrives while utempter has its own handler in is lost.)
fn start(tmux: &Tmux, conf: &Path, endpoint: &str, token_file: &Path) {
    let conf = conf.to_str().expect("utf-8 path");
    let token_file = token_file.to_str().expect("utf-8 path");
    let script = r#""$0" "$@"; echo "relayctl exited with $?""#;
    tmux.ok(&[
        "-f",
        conf,
        "new-session",
        "-d",
        "-s",
        SESSION,
        "-x",
        "100",
        "-y",
        "30",
        "-e",
        "NO_COLOR=1",
        "sh",
        "-c",
        script,
        env!("CARGO_BIN_EXE_relayctl"),
        "tui",
        "--endpoint",
        endpoint,
        "--token-file",
        token_file,
    ]);
}

async fn assert_echo(public: SocketAddr) {
    let payload = b"hello through a mapping added in the tui";
    let back = tokio::time::timeout(Duration::from_secs(10), echo_once(public, payload))
        .await
        .expect("echo within 10s")
        .expect("echo round trip");
    assert_eq!(back, payload);
}

/// The text inside a dialog's borders, its lines joined: a long command
/// broken over several lines comes back whole.
fn dialog_text(screen: &str) -> String {
    let inside = |l: &str| {
        let (Some(a), Some(b)) = (l.find('│'), l.rfind('│')) else { return String::new() };
        l.get(a + '│'.len_utf8()..b).unwrap_or_default().trim().to_owned()
    };
    screen.lines().map(inside).collect()
}

/// A cloud agent whose tunnel listener speaks TLS with a self-signed
/// certificate, as a small deployment has it.
async fn tls_cloud(dir: &Path) -> Cloud {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("a certificate");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).expect("write key");
    let p = |name: &str| dir.join(name).display().to_string();
    let toml = format!(
        "[control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
         state_file = \"{}\"\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\n\
         [tunnel.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        p("state.json"),
        p("cert.pem"),
        p("key.pem"),
    );
    Cloud::start(cloud_config(&toml)).await.expect("TLS cloud")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_a_site_from_the_tui_and_run_it() {
    if !tmux_installed() {
        let why = "tmux is not installed (apt-get install -y tmux)";
        e2e_tests::skip::cannot_run("tui_tmux::enrol_a_site_from_the_tui_and_run_it", why);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = echo_server().await;
    let cloud = tls_cloud(dir.path()).await;
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write token");
    let conf = dir.path().join("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").expect("write tmux.conf");
    let endpoint = format!("http://{}", cloud.control_addr().expect("control API"));

    let tmux = Tmux { socket: format!("relayctl-enrol-{}", std::process::id()) };
    start(&tmux, &conf, &endpoint, &token_file);
    tmux.wait_for("the empty fleet", |s| s.contains("no edges yet")).await;

    // n, the edge's name, Enter through the group and the default 15m.
    tmux.keys(&["n"]);
    tmux.wait_for("the enrol form", |s| s.contains("Enrol a new site")).await;
    tmux.text("branch-7");
    tmux.keys(&["Enter", "Enter", "Enter"]);
    let shown = tmux.wait_for("the code's dialog", |s| s.contains("Site enrolment")).await;
    let text = dialog_text(&tmux.visible());
    let command = text
        .split_once("relay-edge enroll")
        .and_then(|(_, rest)| rest.split_once("--dir"))
        .map(|(args, _)| args.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no command in the dialog:\n{shown}"));
    // `--cloud URL --code CODE`, as the dialog shows them.
    let [flag_cloud, url, flag_code, code] = &command[..] else {
        panic!("unexpected command {command:?}:\n{shown}")
    };
    assert_eq!((flag_cloud.as_str(), flag_code.as_str()), ("--cloud", "--code"));
    assert_eq!(url, &format!("wss://127.0.0.1:{}/tunnel", cloud.tunnel_addr().port()));
    let screen = tmux.wait_for("the new edge listed", |s| s.contains("branch-7")).await;
    assert!(screen.contains("Site enrolment"), "the dialog stays until closed:\n{screen}");

    // On the "on-prem machine": the real relay-edge redeems the code
    // (checking the cloud's key against the code's pin) and runs.
    let edge_dir = dir.path().join("edge");
    let out = Command::new(e2e_tests::bin("relay-edge"))
        .args(["enroll", "--cloud", url, "--code", code, "--dir"])
        .arg(&edge_dir)
        .args(["--allow", &echo.to_string()])
        .output()
        .expect("relay-edge enroll");
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "relay-edge enroll failed: {said}");
    assert!(said.contains("enrolled as edge branch-7"), "{said}");
    let mut edge = Command::new(e2e_tests::bin("relay-edge"))
        .arg("--config")
        .arg(edge_dir.join("edge.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay-edge runs");

    tmux.keys(&["Escape"]);
    let connected =
        |s: &str| s.lines().any(|l| l.starts_with("branch-7 ") && l.contains("connected"));
    tmux.wait_for("branch-7 connected", |s| connected(s) && !s.contains("Site enrolment")).await;

    // On exit the command is printed again, for the scrollback.
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("relayctl to exit", |s| s.contains("relayctl exited with")).await;
    assert!(screen.contains("relayctl exited with 0"), "{screen}");
    assert!(screen.contains("enrolment code for edge branch-7"), "{screen}");
    let _ = edge.kill();
    let _ = edge.wait();
    drop(tmux);
    cloud.shutdown().await;
}
