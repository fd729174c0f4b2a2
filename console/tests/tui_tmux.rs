//! The real `relayctl tui` in a real terminal: tmux runs it against real
//! agents on loopback; the test types into the add form, waits for the
//! mapping to be listed, uses it, and quits.
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
    tmux.keys(&["Tab", "Enter"]); // allow left empty; Enter on the last field adds
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
