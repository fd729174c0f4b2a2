//! The systemd units in `deploy/` and what they rely on: the state file in
//! the unit's `StateDirectory` (the config's directory is read-only under
//! `ProtectSystem=strict`), a start that fails at once when the state file
//! cannot be written, and secrets handed over with `LoadCredential` so
//! that they stay private under `DynamicUser=yes`.

use std::path::Path;
use std::process::Command;

use agent_cloud::Cloud;
use e2e_tests::{bin, cloud_config, cloud_toml_with_control};

/// `key=value` lines of a unit's `[Service]` section, in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = "";
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                settings.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    assert!(!settings.is_empty(), "{unit}: no [Service] settings found");
    settings
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// Both units lock the file system down and run as a dynamic user, so
/// secrets come as credentials from a root-only directory, and the cloud
/// keeps its state in its StateDirectory.
#[test]
fn units_keep_state_writable_and_secrets_private() {
    for (unit, credentials) in [
        ("relay-cloud.service", &["admin.token", "edge-a.token", "tls.key"][..]),
        ("relay-edge.service", &["edge.token"][..]),
    ] {
        let settings = service_settings(unit);
        assert_eq!(values(&settings, "DynamicUser"), ["yes"], "{unit}");
        // `systemctl reload` re-reads the config file (SIGHUP).
        assert_eq!(values(&settings, "ExecReload"), ["/bin/kill -HUP $MAINPID"], "{unit}");
        assert_eq!(values(&settings, "ProtectSystem"), ["strict"], "{unit}");
        let loaded: Vec<(&str, &str)> = values(&settings, "LoadCredential")
            .into_iter()
            .map(|v| v.split_once(':').unwrap_or_else(|| panic!("{unit}: LoadCredential={v}")))
            .collect();
        for name in credentials {
            let source = loaded.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
            let source = source.unwrap_or_else(|| panic!("{unit}: no LoadCredential={name}:..."));
            assert!(
                source.starts_with("/etc/relay/secrets/"),
                "{unit}: {name} from {source}, outside the root-only /etc/relay/secrets"
            );
        }
    }
    let cloud = service_settings("relay-cloud.service");
    assert_eq!(values(&cloud, "StateDirectory"), ["relay-cloud"]);
    assert_eq!(values(&cloud, "StateDirectoryMode"), ["0700"]);
}

/// What systemd's StateDirectory= sets: `STATE_DIRECTORY`. With it, and no
/// `state_file` in the config, `--check` reports the state file in it and
/// checks that it can be written there.
#[tokio::test]
async fn the_default_state_file_lives_in_the_state_directory() {
    let config_dir = tempfile::tempdir().expect("temp dir");
    let state_dir = tempfile::tempdir().expect("temp dir");
    let toml = cloud_toml_with_control("127.0.0.1:0", &[], Path::new("unused"))
        .replace("state_file = \"unused\"\n", "");
    assert!(!toml.contains("state_file"), "{toml}");
    let config = config_dir.path().join("cloud.toml");
    std::fs::write(&config, &toml).expect("write config");
    let check = |state_directory: &Path| {
        Command::new(bin("relay-cloud"))
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .env("STATE_DIRECTORY", state_directory)
            .output()
            .expect("run relay-cloud --check")
    };

    let out = check(state_dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--check failed: {}", String::from_utf8_lossy(&out.stderr));
    let expected = state_dir.path().join("relay-cloud-state.json");
    assert!(stdout.contains(&expected.display().to_string()), "{stdout}");

    let missing = state_dir.path().join("missing");
    let out = check(&missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--check passed with an unusable state directory");
    assert!(stderr.contains("cannot write in") && stderr.contains("missing"), "{stderr}");
}

/// A state file that cannot be written stops the start with a message
/// that says so, instead of a cloud that fails every API change later.
#[tokio::test]
async fn a_state_file_that_cannot_be_written_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_file = dir.path().join("no-such-dir").join("state.json");
    let toml = cloud_toml_with_control("127.0.0.1:0", &[], &state_file);
    match Cloud::start(cloud_config(&toml)).await {
        Ok(cloud) => {
            cloud.shutdown().await;
            panic!("the cloud started with a state file it cannot write");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.contains("cannot write in"), "{shown}");
            assert!(shown.contains(&state_file.display().to_string()), "{shown}");
        }
    }
}
