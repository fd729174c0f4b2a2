//! The `relay-cloud` binary's command line: `--check`, exit codes, and
//! error messages that name the file, line and key.

use std::path::Path;
use std::process::Command;

fn relay_cloud(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_relay-cloud"))
        .args(args)
        .output()
        .expect("run relay-cloud");
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
    let (code, stdout, stderr) = relay_cloud(&["--config", &example("cloud.toml"), "--check"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn check_names_file_line_and_key_of_a_typo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cloud.toml");
    std::fs::write(
        &path,
        "[tunnel]\nlisten = \"127.0.0.1:0\"\n\n[[edges]]\nid = \"e1\"\ntoken = \"q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\"\n\n[[mappings]]\nname = \"m\"\nlisen = \"127.0.0.1:0\"\n",
    )
    .expect("write");
    let (code, _, stderr) = relay_cloud(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cloud.toml:10:"), "no file:line in {stderr}");
    assert!(stderr.contains("lisen"), "no key in {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let (code, _, stderr) = relay_cloud(&["--config", "/nonexistent/cloud.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/cloud.toml"), "{stderr}");
}

#[test]
fn check_reports_an_unreadable_tls_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cloud.toml");
    std::fs::write(
        &path,
        "[tunnel]\nlisten = \"127.0.0.1:0\"\n[tunnel.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n\n[[edges]]\nid = \"e1\"\ntoken = \"q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\"\n",
    )
    .expect("write");
    let (code, _, stderr) = relay_cloud(&["--config", path.to_str().expect("utf-8"), "--check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.pem"), "{stderr}");
}
