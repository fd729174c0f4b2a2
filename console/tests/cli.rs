//! The `relayctl` binary against real agents on loopback: subcommands,
//! JSON output, batch files, exit codes and one-line errors.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, TOKEN, cloud_config, cloud_toml_with_control, echo_server, edge_config, edge_toml,
    eventually, free_port, serves,
};
use serde_json::Value;

struct Agents {
    cloud: Cloud,
    edge: Edge,
    endpoint: String,
    token_file: tempfile::NamedTempFile,
    echo: String,
    _dir: tempfile::TempDir,
}

async fn agents() -> Agents {
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = echo_server().await;
    let toml = cloud_toml_with_control(
        "127.0.0.1:0",
        &[("base", &echo.to_string())],
        &dir.path().join("state.json"),
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let base = cloud.mapping_addr("base").expect("base");
    assert!(eventually(Duration::from_secs(10), || serves(base)).await);
    let token_file = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token_file.path(), format!("{ADMIN_TOKEN}\n")).expect("write token");
    let endpoint = format!("http://{}", cloud.control_addr().expect("control"));
    Agents { cloud, edge, endpoint, token_file, echo: echo.to_string(), _dir: dir }
}

impl Agents {
    /// Runs relayctl with this endpoint and token (off the async runtime).
    async fn relayctl(&self, args: &[&str]) -> Output {
        relayctl_with(&self.endpoint, Some(self.token_file.path()), args).await
    }

    async fn stop(self) {
        self.edge.shutdown().await;
        self.cloud.shutdown().await;
    }
}

async fn relayctl_with(endpoint: &str, token_file: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relayctl"));
    command
        .args(["--endpoint", endpoint])
        .args(args)
        .env_remove("RELAYCTL_TOKEN")
        .env("HOME", "/nonexistent");
    if let Some(file) = token_file {
        command.arg("--token-file").arg(file);
    }
    tokio::task::spawn_blocking(move || command.output().expect("run relayctl"))
        .await
        .expect("join")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn names(a: &Agents) -> Vec<String> {
    let out = a.relayctl(&["mappings", "list", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    stdout_json(&out)
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_add_list_drain_remove_with_json_output() {
    let a = agents().await;
    let web = free_port();
    let out = a
        .relayctl(&[
            "mappings",
            "add",
            "web",
            "--listen",
            &web.to_string(),
            "--edge",
            "e1",
            "--target",
            &a.echo,
            "-o",
            "json",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let added = stdout_json(&out);
    assert_eq!(added["name"], "web");
    assert_eq!(added["state"], "active");
    assert!(serves(web).await, "added mapping does not serve");

    let out = a.relayctl(&["mappings", "list"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("MAPPING"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("web ") && l.contains("active")), "{table}");

    let out = a.relayctl(&["status", "-o", "json"]).await;
    let status = stdout_json(&out);
    assert_eq!(status["mappings_total"], 2);
    assert_eq!(status["edges_total"], 1);

    let out = a.relayctl(&["edges", "list", "-o", "json"]).await;
    assert_eq!(stdout_json(&out)[0]["id"], "e1");
    let out = a.relayctl(&["edges", "drain", "e1"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.relayctl(&["edges", "list", "-o", "json"]).await;
    assert_eq!(stdout_json(&out)[0]["draining"], true);
    let out = a.relayctl(&["edges", "undrain", "e1", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["draining"], false);
    let out = a.relayctl(&["edges", "list", "-o", "json"]).await;
    assert_eq!(stdout_json(&out)[0]["draining"], false);
    let out = a.relayctl(&["edges", "undrain", "nobody"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("no edge with id \"nobody\""), "{}", stderr(&out));

    let out = a.relayctl(&["mappings", "drain", "web", "--deadline", "10s"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("draining web"));
    let out = a.relayctl(&["mappings", "remove", "base"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Refusals: a one-line reason and a non-zero exit code.
    let out = a.relayctl(&["mappings", "remove", "nope"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("no mapping named \"nope\""), "{}", stderr(&out));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_files_apply_atomically_and_name_their_lines() {
    let a = agents().await;
    let dir = tempfile::tempdir().expect("dir");
    let (p1, p2) = (free_port(), free_port());
    let good = format!(
        "# two new mappings, the old one drained\n\nmappings add one --listen {p1} --edge e1 --target {echo}\nmappings add two --listen {p2} --edge e1 --target {echo} --allow 127.0.0.0/8\nmappings drain base --deadline 5s\n",
        echo = a.echo
    );
    let good_file = dir.path().join("good.batch");
    std::fs::write(&good_file, &good).expect("write");

    // Dry run: the plan, and nothing changes.
    let out = a.relayctl(&["batch", good_file.to_str().expect("utf-8"), "--dry-run"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("good.batch:3: ok") && plan.contains("good.batch:5: ok"), "{plan}");
    assert_eq!(names(&a).await, vec!["base".to_owned()]);

    // A syntax error on line 7: nothing applied, line 7 named.
    let mut bad = good.clone();
    bad.push_str("\nmappings add three --lisen 127.0.0.1:1 --edge e1 --target h:1\n");
    let bad_file = dir.path().join("bad.batch");
    std::fs::write(&bad_file, &bad).expect("write");
    let out = a.relayctl(&["batch", bad_file.to_str().expect("utf-8")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.batch:7:"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was applied"), "{}", stderr(&out));
    assert_eq!(names(&a).await, vec!["base".to_owned()]);

    // A change that fails when applied (port in use): nothing changes.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("squatter");
    let taken = squatter.local_addr().expect("addr");
    let failing =
        format!("{good}mappings add three --listen {taken} --edge e1 --target {}\n", a.echo);
    let failing_file = dir.path().join("failing.batch");
    std::fs::write(&failing_file, failing).expect("write");
    let out = a.relayctl(&["batch", failing_file.to_str().expect("utf-8"), "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = stdout_json(&out);
    assert_eq!(report["applied"], false);
    let failed: Vec<&Value> =
        report["lines"].as_array().expect("lines").iter().filter(|l| l["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["line"], 6);
    assert_eq!(names(&a).await, vec!["base".to_owned()]);
    std::net::TcpListener::bind(p1).expect("rolled back: port free");

    // The good file from stdin, for real.
    let mut command = Command::new(env!("CARGO_BIN_EXE_relayctl"));
    command
        .args(["--endpoint", &a.endpoint, "--token-file"])
        .arg(a.token_file.path())
        .args(["batch", "-", "-o", "json"])
        .stdin(std::fs::File::open(&good_file).expect("open"));
    let out =
        tokio::task::spawn_blocking(move || command.output().expect("run")).await.expect("join");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["applied"], true);
    let out = a.relayctl(&["mappings", "list", "-o", "json"]).await;
    let listed = stdout_json(&out);
    let state = |name: &str| {
        listed
            .as_array()
            .expect("array")
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["state"].clone())
    };
    assert_eq!(state("one"), Some(Value::from("active")));
    assert_eq!(state("two"), Some(Value::from("active")));
    // base had no open connection: it is draining or already gone.
    assert!(state("base").is_none_or(|s| s == "draining"), "{listed}");
    assert!(serves(p1).await && serves(p2).await);
    drop(squatter);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_and_wrong_token_fail_with_one_line_and_distinct_codes() {
    let nobody = format!("http://{}", free_port());
    let out = relayctl_with(&nobody, None, &["status"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("relayctl: cannot reach the cloud agent at http://127.0.0.1:"),
        "{err}"
    );
    // Following the events of an agent that is not there: the same code.
    let out = relayctl_with(&nobody, None, &["events", "-f"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    let a = agents().await;
    let wrong = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(wrong.path(), "not-the-admin-token-at-all-123456").expect("write");
    let out = relayctl_with(&a.endpoint, Some(wrong.path()), &["mappings", "list"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the admin token"), "{}", stderr(&out));
    let out = relayctl_with(&a.endpoint, None, &["mappings", "list"]).await;
    assert_eq!(out.status.code(), Some(3));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_the_first_that_answers_is_used() {
    let a = agents().await;
    let nobody = format!("http://{}", free_port());
    let both = format!("{nobody},{}", a.endpoint);
    let token = Some(a.token_file.path());
    let out = relayctl_with(&both, token, &["-v", "mappings", "list", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)[0]["name"], "base");
    let err = stderr(&out);
    assert!(err.contains(&format!("{nobody} did not answer")), "{err}");
    assert!(err.contains(&format!("{} answered", a.endpoint)), "{err}");

    // A change goes to the one that answers, and status says which it is.
    let out = relayctl_with(&both, token, &["edges", "drain", "e1"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = relayctl_with(&both, token, &["status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!(" at {}: ", a.endpoint)), "{text}");
    assert!(!text.contains("cluster"), "alone: no cluster line: {text}");

    // An agent without [cluster] has no nodes: one line, non-zero.
    let out = relayctl_with(&both, token, &["nodes", "list"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("runs alone: no [cluster] section"), "{err}");
    let out = relayctl_with(&a.endpoint, token, &["nodes", "drain", "b", "--deadline", "5s"]).await;
    assert!(stderr(&out).contains("runs alone"), "{}", stderr(&out));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_add_rotate_revoke_and_remove_print_tokens_once_and_batch() {
    let a = agents().await;
    // Table output: the token, and what to do with it.
    let out = a.relayctl(&["edges", "add", "site-b", "--group", "pool"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no token line in:\n{text}"))
        .to_owned();
    assert!(text.contains("edge site-b added, in group pool") && text.contains("token_file"));
    let out = a.relayctl(&["edges", "add", "site-b"]).await;
    assert_eq!(out.status.code(), Some(4), "a conflict: {}", stderr(&out));

    // JSON: the rotation's token, and until when the old one works.
    let out =
        a.relayctl(&["edges", "rotate-token", "site-b", "--grace", "10m", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let body = stdout_json(&out);
    let new = body["token"].as_str().expect("token").to_owned();
    assert_ne!(new, token);
    assert!(body["edge"]["previous_token_until_unix_ms"].is_u64(), "{body}");
    let out = a.relayctl(&["edges", "rotate-token", "site-b", "--grace", "31d"]).await;
    assert_eq!(out.status.code(), Some(2), "refused before sending: {}", stderr(&out));

    let out = a.relayctl(&["edges", "revoke", "site-b"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.relayctl(&["edges", "list", "-o", "json"]).await;
    let edges = stdout_json(&out);
    let site_b = edges.as_array().unwrap().iter().find(|e| e["id"] == "site-b").expect("listed");
    assert_eq!(site_b["revoked"], Value::Bool(true));
    let out = a.relayctl(&["edges", "list"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));

    // A batch file mixes edges and mappings; each new token is printed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.batch");
    let listen = free_port();
    std::fs::write(
        &file,
        format!(
            "edges add site-c\nmappings add web --listen {listen} --edge site-c --target {}\n\
             edges remove site-b\n",
            a.echo
        ),
    )
    .unwrap();
    let out = a.relayctl(&["batch", file.to_str().unwrap(), "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout_json(&out);
    assert_eq!(report["applied"], Value::Bool(true), "{report}");
    assert_eq!(report["lines"][0]["token"].as_str().map(str::len), Some(64), "{report}");
    let out = a.relayctl(&["edges", "list", "-o", "json"]).await;
    let ids: Vec<String> = stdout_json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["e1", "site-c"]);
    a.stop().await;
}
