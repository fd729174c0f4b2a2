//! Reloading the config file (SIGHUP, `systemctl reload`): what changed
//! between the config the agent runs and the file's new text, and which of
//! it can change live.
//!
//! Live: the config-file edges and groups (an edge added is admitted, one
//! removed or with a new token loses its tunnels; the others keep theirs),
//! and config-file mappings added (bound now) or removed (drained with the
//! default deadline). Everything else is reported and left as it runs: a
//! mapping whose definition changed, and the sections that hold listeners,
//! TLS, the store or the log (`[tunnel]`, `[control]`, `[cluster]`,
//! `[events]`, `[log]`, `[proxy_protocol]`, `shutdown_grace`). The diff is
//! pure; `Cloud::reload` applies it.

use config::{CloudConfig, EdgeEntry, MappingConfig};

/// What a new config changes.
#[derive(Debug, Default)]
pub(crate) struct ConfigDiff {
    /// Config-file edges or groups differ (ids, tokens, members).
    pub(crate) fleet_changed: bool,
    /// Sentences saying how.
    pub(crate) fleet_lines: Vec<String>,
    pub(crate) mappings_added: Vec<MappingConfig>,
    pub(crate) mappings_removed: Vec<String>,
    /// Mappings whose definition changed: not applied live.
    pub(crate) mappings_changed: Vec<String>,
    /// Sections that differ and need a restart.
    pub(crate) restart_needed: Vec<&'static str>,
}

impl ConfigDiff {
    pub(crate) fn is_empty(&self) -> bool {
        !self.fleet_changed
            && self.mappings_added.is_empty()
            && self.mappings_removed.is_empty()
            && self.mappings_changed.is_empty()
            && self.restart_needed.is_empty()
    }
}

fn same_edge(a: &EdgeEntry, b: &EdgeEntry) -> bool {
    a.id == b.id && a.token.expose() == b.token.expose()
}

/// Compares the running config with the file's new one.
pub(crate) fn diff(old: &CloudConfig, new: &CloudConfig) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    for e in &new.edges {
        match old.edges.iter().find(|o| o.id == e.id) {
            None => d.fleet_lines.push(format!("edge {} added", e.id)),
            Some(o) if !same_edge(o, e) => {
                d.fleet_lines.push(format!("edge {}: new token (its tunnels reconnect)", e.id));
            }
            Some(_) => {}
        }
    }
    for o in &old.edges {
        if !new.edges.iter().any(|e| e.id == o.id) {
            d.fleet_lines.push(format!("edge {} removed (its tunnels close)", o.id));
        }
    }
    if old.groups != new.groups {
        d.fleet_lines.push("groups changed".into());
    }
    d.fleet_changed = !d.fleet_lines.is_empty();

    for m in &new.mappings {
        match old.mappings.iter().find(|o| o.name == m.name) {
            None => d.mappings_added.push(m.clone()),
            Some(o) if o != m => d.mappings_changed.push(m.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.mappings {
        if !new.mappings.iter().any(|m| m.name == o.name) {
            d.mappings_removed.push(o.name.clone());
        }
    }

    // Secrets print as `****`, so a changed admin token or etcd password
    // is not seen here: those need a restart, as the docs say.
    let sections: [(&'static str, String, String); 8] = [
        ("[tunnel]", format!("{:?}", old.tunnel), format!("{:?}", new.tunnel)),
        ("[control]", format!("{:?}", old.control), format!("{:?}", new.control)),
        ("[cluster]", format!("{:?}", old.cluster), format!("{:?}", new.cluster)),
        ("[events]", format!("{:?}", old.events), format!("{:?}", new.events)),
        ("[log]", format!("{:?}", old.log), format!("{:?}", new.log)),
        (
            "[proxy_protocol]",
            format!("{:?}", old.proxy_protocol),
            format!("{:?}", new.proxy_protocol),
        ),
        (
            "host_routing_timeout",
            format!("{:?}", old.host_routing_timeout),
            format!("{:?}", new.host_routing_timeout),
        ),
        (
            "shutdown_grace",
            format!("{:?}", old.shutdown_grace),
            format!("{:?}", new.shutdown_grace),
        ),
    ];
    d.restart_needed =
        sections.into_iter().filter(|(_, a, b)| a != b).map(|(name, _, _)| name).collect();
    d
}

/// The config the agent runs after applying `d`: `new`'s edges, groups
/// and the mappings that were applied, `old`'s everything else (so what
/// was not applied is reported again at the next reload).
pub(crate) fn applied(old: &CloudConfig, new: &CloudConfig, d: &ConfigDiff) -> CloudConfig {
    let mut running = old.clone();
    running.edges = new.edges.clone();
    running.groups = new.groups.clone();
    running.mappings.retain(|m| !d.mappings_removed.contains(&m.name));
    running.mappings.extend(d.mappings_added.iter().cloned());
    running
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> CloudConfig {
        CloudConfig::from_toml(text, std::path::Path::new("cloud.toml")).unwrap()
    }

    const BASE: &str = "[tunnel]\nlisten = \"127.0.0.1:7000\"\n\
        [[edges]]\nid = \"a\"\ntoken = \"q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\"\n\
        [[mappings]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nedge = \"a\"\ntarget = \"10.0.0.5:80\"\n";

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(diff(&config(BASE), &config(BASE)).is_empty());
    }

    #[test]
    fn edges_and_mappings_change_live_and_listeners_need_a_restart() {
        let new = BASE
            .replace("127.0.0.1:7000", "127.0.0.1:7001")
            .replace("q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd", "Zr8cLq2VnW5xT0aJ7dKp3HsB9mYe4GfU")
            .replace("10.0.0.5:80", "10.0.0.6:80")
            + "[[edges]]\nid = \"b\"\ntoken = \"Xk2mP9qR4sT7vW1yZ3bC5dF8gH0jL6nA\"\n\
               [[mappings]]\nname = \"db\"\nlisten = \"127.0.0.1:5432\"\nedge = \"b\"\ntarget = \"10.0.0.7:5432\"\n";
        let (old, new) = (config(BASE), config(&new));
        let d = diff(&old, &new);
        assert!(d.fleet_changed);
        assert_eq!(d.fleet_lines, ["edge a: new token (its tunnels reconnect)", "edge b added"]);
        assert_eq!(d.mappings_added.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["db"]);
        assert_eq!(d.mappings_changed, ["web"]);
        assert_eq!(d.restart_needed, ["[tunnel]"]);
        let running = applied(&old, &new, &d);
        let again = diff(&running, &new);
        assert!(!again.fleet_changed && again.mappings_added.is_empty(), "applied once");
        assert_eq!(
            (again.mappings_changed.len(), again.restart_needed.len()),
            (1, 1),
            "still told"
        );
    }

    #[test]
    fn a_removed_mapping_and_edge_are_seen() {
        let new = "[tunnel]\nlisten = \"127.0.0.1:7000\"\n\
            [[edges]]\nid = \"b\"\ntoken = \"Xk2mP9qR4sT7vW1yZ3bC5dF8gH0jL6nA\"\n";
        let d = diff(&config(BASE), &config(new));
        assert_eq!(d.mappings_removed, ["web"]);
        assert!(d.fleet_lines.contains(&"edge a removed (its tunnels close)".to_owned()));
    }
}
