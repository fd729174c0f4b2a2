//! Reloading the edge's config file (SIGHUP, `systemctl reload`): the
//! stream policy (`allow`, `check_resolved`, `connect_timeout`) changes
//! live for every stream and probe opened from then on; connections open
//! already keep running (as a removed mapping drains on the cloud). The
//! rest (the cloud URL, the edge id and token, TLS trust, the tunnel count,
//! reconnect backoff, windows, `shutdown_grace`, `[log]`) is reported as
//! needing a restart and left as it runs. The diff is pure.

use std::time::Duration;

use config::{AllowEntry, EdgeConfig};

/// What a stream is checked against when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamPolicy {
    pub(crate) allow: Vec<AllowEntry>,
    pub(crate) check_resolved: bool,
    pub(crate) connect_timeout: Duration,
}

impl StreamPolicy {
    pub(crate) fn of(config: &EdgeConfig) -> StreamPolicy {
        StreamPolicy {
            allow: config.allow.clone(),
            check_resolved: config.check_resolved,
            connect_timeout: config.connect_timeout,
        }
    }
}

/// What a new config file changes, as the log says it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes applied now, one sentence each.
    pub applied: Vec<String>,
    /// Keys that differ and need a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Compares the running config with the file's new one.
pub(crate) fn diff(old: &EdgeConfig, new: &EdgeConfig) -> ReloadReport {
    let mut report = ReloadReport::default();
    let added: Vec<String> =
        new.allow.iter().filter(|e| !old.allow.contains(e)).map(ToString::to_string).collect();
    let removed: Vec<String> =
        old.allow.iter().filter(|e| !new.allow.contains(e)).map(ToString::to_string).collect();
    if !added.is_empty() {
        report.applied.push(format!("allowed now: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        report.applied.push(format!(
            "no longer allowed: {} (connections open to them continue)",
            removed.join(", ")
        ));
    }
    if old.check_resolved != new.check_resolved {
        report.applied.push(format!("check_resolved = {}", new.check_resolved));
    }
    if old.connect_timeout != new.connect_timeout {
        report.applied.push(format!("connect_timeout = {:?}", new.connect_timeout));
    }
    let restart = [
        ("cloud_url", old.cloud_url != new.cloud_url),
        ("edge_id", old.edge_id != new.edge_id),
        ("token", old.token.expose() != new.token.expose()),
        ("tunnels", old.tunnels != new.tunnels),
        (
            "TLS trust (ca_file, public_roots, pin_sha256, allow_plaintext)",
            old.ca_file != new.ca_file
                || old.public_roots != new.public_roots
                || old.pin_sha256 != new.pin_sha256
                || old.allow_plaintext != new.allow_plaintext,
        ),
        ("[reconnect]", old.reconnect != new.reconnect),
        ("shutdown_grace", old.shutdown_grace != new.shutdown_grace),
        (
            "stream_window, window_budget",
            old.stream_window != new.stream_window || old.window_budget != new.window_budget,
        ),
        ("[log]", old.log != new.log),
    ];
    report.restart_needed =
        restart.iter().filter(|(_, differs)| *differs).map(|(k, _)| *k).collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> EdgeConfig {
        let text = format!(
            "cloud_url = \"ws://127.0.0.1:7000/tunnel\"\nedge_id = \"e1\"\n\
             token = \"Xk2mP9qR4sT7vW1yZ3bC5dF8gH0jL6nA\"\n{extra}"
        );
        EdgeConfig::from_toml(&text, std::path::Path::new("edge.toml")).expect("valid")
    }

    #[test]
    fn the_allowlist_and_connect_settings_apply_and_the_rest_waits_for_a_restart() {
        let old = config("allow = [\"127.0.0.1:22\", \"db.internal:5432\"]\n");
        let new = config(
            "allow = [\"127.0.0.1:22\", \"10.0.0.0/8:443\"]\ncheck_resolved = true\n\
             connect_timeout = \"2s\"\ntunnels = 4\n",
        );
        let report = diff(&old, &new);
        assert_eq!(
            report.applied,
            [
                "allowed now: 10.0.0.0/8:443",
                "no longer allowed: db.internal:5432 (connections open to them continue)",
                "check_resolved = true",
                "connect_timeout = 2s",
            ]
        );
        assert_eq!(report.restart_needed, ["tunnels"]);
        assert_eq!(StreamPolicy::of(&new).allow.len(), 2);
        assert_eq!(diff(&new, &new), ReloadReport::default(), "nothing changed");
    }
}
