//! Secrets in files open to other users, as ssh checks private keys: a
//! token file, or a config file holding a token inline, with any group or
//! other permission bit is refused where the token is used beyond loopback,
//! and accepted with a warning on loopback (the demo, the tests).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use config::{CloudConfig, EdgeConfig};

const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";
const ADMIN: &str = "Zk3pQ8rT1vW6yB0nM4cX7sL2dF9gH5jA";

/// Writes `text` to `dir/name` with `mode` and returns the path.
fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A cloud config with a TLS tunnel on `listen` and edge `e` reading its
/// token from `e.token`.
fn cloud_text(listen: &str) -> String {
    format!(
        "[tunnel]\nlisten = \"{listen}\"\n[tunnel.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
         [[edges]]\nid = \"e\"\ntoken_file = \"e.token\"\n"
    )
}

#[test]
fn an_open_token_file_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "e.token", &format!("{TOKEN}\n"), 0o644);
    let config = write(dir.path(), "cloud.toml", &cloud_text("0.0.0.0:8443"), 0o600);
    let err = CloudConfig::load(&config).expect_err("an open token file beyond loopback");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:8:14: edges[0].token_file: ", config.display())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "token file {:?} is open to group or others (mode 0644)",
            token.display()
        )),
        "{shown}"
    );
    assert!(shown.contains("chmod 600") && shown.contains("LoadCredential"), "{shown}");
    assert!(shown.contains("tunnel.listen \"0.0.0.0:8443\" is beyond loopback"), "{shown}");

    // Group-readable is open too (ssh refuses 0640 keys as well).
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = CloudConfig::load(&config).expect_err("a group-readable token file");
    assert!(err.to_string().contains("(mode 0640)"), "{err}");
}

#[test]
fn private_token_files_load_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    // 0600 as written by an operator, 0400 as systemd's LoadCredential=
    // leaves it in $CREDENTIALS_DIRECTORY.
    for mode in [0o600, 0o400] {
        write(dir.path(), "e.token", &format!("{TOKEN}\n"), 0o600);
        std::fs::set_permissions(dir.path().join("e.token"), std::fs::Permissions::from_mode(mode))
            .unwrap();
        let config = write(dir.path(), "cloud.toml", &cloud_text("0.0.0.0:8443"), 0o644);
        let c = CloudConfig::load(&config).unwrap_or_else(|e| panic!("mode {mode:o}: {e}"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Without inline tokens the config file itself may be public.
        std::fs::remove_file(dir.path().join("e.token")).unwrap();
    }
}

#[test]
fn an_open_token_file_on_loopback_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "e.token", &format!("{TOKEN}\n"), 0o644);
    let config = write(dir.path(), "cloud.toml", &cloud_text("127.0.0.1:8443"), 0o600);
    let c = CloudConfig::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let warning = &c.warnings[0];
    assert!(warning.starts_with(&format!("{}:8:14: edges[0].token_file: ", config.display())));
    assert!(warning.contains("(mode 0644)") && warning.contains("loopback only"), "{warning}");
}

#[test]
fn an_inline_token_in_an_open_config_file_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "cloud_url = \"wss://relay.example.com/tunnel\"\nedge_id = \"e\"\ntoken = \"{TOKEN}\"\n"
    );
    let config = write(dir.path(), "edge.toml", &text, 0o604);
    let err = EdgeConfig::load(&config).expect_err("inline token in a world-readable file");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:3:9: token: the config file ", config.display())),
        "{shown}"
    );
    assert!(shown.contains("holds this token inline and is open to group or others (mode 0604)"));
    assert!(shown.contains("cloud_url host \"relay.example.com\" is beyond loopback"), "{shown}");

    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = EdgeConfig::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(e.warnings.is_empty());

    // Text that did not come from a file has no permissions to check.
    assert!(EdgeConfig::from_toml(&text, &config).is_ok());
}

#[test]
fn the_admin_token_follows_the_control_listener() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "e.token", &format!("{TOKEN}\n"), 0o600);
    write(dir.path(), "admin.token", &format!("{ADMIN}\n"), 0o644);
    let text = |listen: &str| {
        format!(
            "{}[control]\nlisten = \"{listen}\"\nadmin_token_file = \"admin.token\"\n",
            cloud_text("127.0.0.1:8443")
        )
    };
    let config = write(dir.path(), "cloud.toml", &text("10.0.0.1:7070"), 0o600);
    let err = CloudConfig::load(&config).expect_err("an open admin token beyond loopback");
    assert!(err.to_string().contains("control.admin_token_file: token file"), "{err}");
    assert!(
        err.to_string().contains("control.listen \"10.0.0.1:7070\" is beyond loopback"),
        "{err}"
    );

    let config = write(dir.path(), "cloud.toml", &text("127.0.0.1:7070"), 0o600);
    let c = CloudConfig::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("control.admin_token_file"), "{:?}", c.warnings);
}

/// The tunnel's TLS private key is a secret too: the same rule as tokens.
#[test]
fn an_open_tls_key_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "e.token", &format!("{TOKEN}\n"), 0o600);
    let key = write(dir.path(), "k.pem", "not read at load\n", 0o644);
    let config = write(dir.path(), "cloud.toml", &cloud_text("0.0.0.0:8443"), 0o644);
    let err = CloudConfig::load(&config).expect_err("an open private key beyond loopback");
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{}:5:7: tunnel.tls.key: ", config.display())), "{shown}");
    assert!(
        shown.contains(&format!(
            "private key file {:?} is open to group or others (mode 0644)",
            key.display()
        )),
        "{shown}"
    );

    let config = write(dir.path(), "cloud.toml", &cloud_text("127.0.0.1:8443"), 0o644);
    let c = CloudConfig::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("tunnel.tls.key: private key file"), "{:?}", c.warnings);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(CloudConfig::load(&config).unwrap().warnings.is_empty());
}

/// A CA file may be public, but whoever can write it chooses whom the edge
/// trusts.
#[test]
fn a_ca_file_writable_by_others_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "e.token", &format!("{TOKEN}\n"), 0o600);
    let ca = write(dir.path(), "ca.pem", "not read at load\n", 0o664);
    let text = "cloud_url = \"wss://relay.example.com/tunnel\"\nedge_id = \"e\"\n\
                token_file = \"e.token\"\nca_file = \"ca.pem\"\n";
    let config = write(dir.path(), "edge.toml", text, 0o644);
    let err = EdgeConfig::load(&config).expect_err("a group-writable CA file");
    let shown = err.to_string();
    assert!(shown.contains(":4:11: ca_file: CA file"), "{shown}");
    assert!(shown.contains("is writable by group or others (mode 0664)"), "{shown}");
    assert!(shown.contains("chmod go-w"), "{shown}");

    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = EdgeConfig::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
}
