//! The `relay-edge` binary's command line: `--check`, exit codes, and
//! error messages that name the file, line and key.

use std::path::Path;
use std::process::Command;

fn relay_edge(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_relay-edge")).args(args).output().expect("run relay-edge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).display().to_string()
}

#[test]
fn check_accepts_the_example() {
    let (code, stdout, stderr) = relay_edge(&["--config", &example("edge.toml"), "--check"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn check_names_file_line_and_key_of_a_typo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        "cloud_url = \"ws://127.0.0.1:7000/tunnel\"\nedge_id = \"e1\"\ntoken = \"q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\"\nallow = []\n\n[reconnect]\ninitial = \"1s\"\n\n\nlisen = \"x\"\n",
    )
    .expect("write");
    let (code, _, stderr) = relay_edge(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("edge.toml:10:"), "no file:line in {stderr}");
    assert!(stderr.contains("lisen"), "no key in {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let (code, _, stderr) = relay_edge(&["--config", "/nonexistent/edge.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/edge.toml"), "{stderr}");
}

#[test]
fn check_reports_an_unreadable_ca_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        "cloud_url = \"wss://relay.example.com/tunnel\"\nedge_id = \"e1\"\ntoken = \"q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\"\nca_file = \"missing.pem\"\nallow = []\n",
    )
    .expect("write");
    // It holds a token inline: private, as it must be for a remote cloud.
    make_private(&path);
    let (code, _, stderr) = relay_edge(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

#[cfg(unix)]
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[cfg(not(unix))]
fn make_private(_: &Path) {}

/// A token in a file open to other users: a warning on `--check` while the
/// cloud is on loopback, an error (exit 1) once it is not.
#[cfg(unix)]
#[test]
fn check_warns_about_an_open_token_file_on_loopback_and_refuses_it_beyond() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("e1.token");
    std::fs::write(&token, "q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = dir.path().join("edge.toml");
    let config = |url: &str| {
        format!("cloud_url = \"{url}\"\nedge_id = \"e1\"\ntoken_file = \"e1.token\"\nallow = []\n")
    };
    std::fs::write(&path, config("ws://127.0.0.1:7000/tunnel")).expect("write");
    let (code, stdout, stderr) =
        relay_edge(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stderr.starts_with("relay-edge: warning: "), "{stderr}");
    assert!(stderr.contains("edge.toml:3:14: token_file: token file"), "{stderr}");
    assert!(stderr.contains("(mode 0644)"), "{stderr}");

    std::fs::write(&path, config("wss://relay.example.com/tunnel")).expect("write");
    let (code, _, stderr) = relay_edge(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cloud_url host \"relay.example.com\" is beyond loopback"), "{stderr}");

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, stdout, stderr) =
        relay_edge(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.contains("trusting the public roots"), "{stdout}");
}
