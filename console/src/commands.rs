//! The subcommands: one call to the control API each, printed as a table
//! or as JSON. Exit codes: 0 success, 1 bad input, 2 agent unreachable,
//! 3 token refused, 4 change refused by the agent, 5 unexpected answer.

use std::process::ExitCode;

use api::{EdgeHealth, EdgeView, MappingState, MappingView, NodeView, PeerAnswer};
use serde::Serialize;

use crate::cli::{Command, EdgesCommand, MappingsCommand, Output};
use crate::client::{ClientError, ControlClient};
use crate::format;
use crate::table::Table;

/// Runs one command and turns its outcome into the process exit code,
/// printing a one-line reason on stderr on failure.
pub(crate) fn run(client: &ControlClient, command: Command, output: Output) -> ExitCode {
    let result = match command {
        Command::Tui => {
            return match crate::tui::run(client.clone(), crate::tui::TuiOptions::default()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("relayctl: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Batch { file, dry_run } => {
            return crate::batch::run(client, &file, dry_run, output);
        }
        Command::Demo => return crate::demo::run(),
        Command::MeasureTui { edges, mappings, rounds } => {
            return crate::tui::measure(edges, mappings, rounds, output);
        }
        Command::Events { since, follow } => crate::events::run(client, since, follow, output),
        Command::Status => status(client, output),
        Command::Edges(EdgesCommand::List) => {
            client.edges().map(|e| print(output, &e, |e| edges_table(e)))
        }
        Command::Edges(EdgesCommand::Drain { id }) => client.drain_edge(&id).map(|c| {
            changed(
                output,
                &c,
                &serde_json::json!({"edge": id, "draining": true}),
                &format!("edge {id} draining"),
            );
        }),
        Command::Edges(EdgesCommand::Undrain { id }) => client.undrain_edge(&id).map(|c| {
            changed(
                output,
                &c,
                &serde_json::json!({"edge": id, "draining": false}),
                &format!("edge {id} takes new connections again"),
            );
        }),
        Command::Edges(EdgesCommand::Add { id, group }) => {
            crate::fleet::add(client, &id, group, output)
        }
        Command::Edges(EdgesCommand::Enroll { id, group, ttl }) => {
            crate::fleet::enroll(client, &id, group, ttl.map(|t| t.as_secs()), output)
        }
        Command::Edges(EdgesCommand::RotateToken { id, grace }) => {
            crate::fleet::rotate(client, &id, grace.map(|g| g.as_secs()), output)
        }
        Command::Edges(EdgesCommand::Remove { id }) => client.remove_edge(&id).map(|c| {
            changed(
                output,
                &c,
                &serde_json::json!({"edge": id, "removed": true}),
                &format!("edge {id} removed; its tunnels are closed"),
            );
        }),
        Command::Edges(EdgesCommand::Revoke { id }) => client.revoke_edge(&id).map(|c| {
            changed(
                output,
                &c,
                &serde_json::json!({"edge": id, "revoked": true}),
                &format!(
                    "edge {id} revoked: its tunnels are closed and it is refused until it gets \
                     a new token (relayctl edges rotate-token {id})"
                ),
            );
        }),
        Command::Mappings(m) => mappings(client, m, output),
        Command::Nodes(n) => crate::cluster::run(client, n, output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn mappings(
    client: &ControlClient,
    command: MappingsCommand,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        MappingsCommand::List => {
            client.mappings().map(|m| print(output, &m, |m| mappings_table(m)))
        }
        MappingsCommand::Add(add) => {
            let spec = add.spec();
            let c = client.add_mapping(&spec)?;
            let view = &c.value;
            let bound = view.bound.clone().unwrap_or_else(|| view.spec.listen.clone());
            let mut sentence = format!(
                "added {} on {bound} via edge {} to {}",
                view.spec.name, view.spec.edge, view.spec.target
            );
            if let Some(nodes) = crate::cluster::mapping_on_nodes(view) {
                sentence = format!("{sentence}: {}", tunnel::untrusted::escape(&nodes));
            }
            changed(output, &c, view, &sentence);
            Ok(())
        }
        MappingsCommand::Drain { name, deadline } => {
            let c = client.drain_mapping(&name, deadline.map(|d| d.as_secs()))?;
            let view = &c.value;
            let open = view.as_ref().map_or(0, |v| v.active_connections);
            let mut sentence = format!("draining {name}: {open} connection(s) open");
            if let Some(nodes) = view.as_ref().and_then(crate::cluster::mapping_on_nodes) {
                sentence = format!("{sentence}; {}", tunnel::untrusted::escape(&nodes));
            }
            changed(output, &c, view, &sentence);
            Ok(())
        }
        MappingsCommand::SetPolicy(set) => {
            let c = client.set_policy(&set.name, &set.policy())?;
            let shown = set.policy().to_policy().map_or_else(|e| e.to_string(), |p| p.to_string());
            changed(output, &c, &c.value, &format!("set the policy of {}: {shown}", set.name));
            Ok(())
        }
        MappingsCommand::Remove { name } => {
            let c = client.remove_mapping(&name)?;
            changed(
                output,
                &c,
                &serde_json::json!({"name": name, "removed": true}),
                &format!("removed {name}"),
            );
            Ok(())
        }
    }
}

pub(crate) fn print<T: Serialize>(output: Output, value: &T, table: impl Fn(&T) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => print!("{}", table(value)),
    }
}

pub(crate) fn done<T: Serialize>(output: Output, value: &T, sentence: &str) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => println!("{sentence}"),
    }
}

/// Prints a change's outcome: with `-o json` the answer's body as it came
/// (`fallback` when it had none); for people the sentence, then the
/// revision and what each node did, in a cluster.
fn changed<T, F: Serialize>(
    output: Output,
    c: &crate::client::Changed<T>,
    fallback: &F,
    sentence: &str,
) {
    match (&c.body, output) {
        (Some(body), Output::Json) => done(output, body, sentence),
        (None, Output::Json) => done(output, fallback, sentence),
        (_, Output::Table) => {
            println!("{sentence}");
            for line in crate::cluster::change_outcomes(c.applied.revision, &c.applied.nodes) {
                println!("{line}");
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Status {
    version: String,
    edges_connected: usize,
    edges_total: usize,
    mappings_active: usize,
    mappings_total: usize,
    edges: Vec<EdgeView>,
    mappings: Vec<MappingView>,
    /// In a cluster: its nodes (the figures above are summed over them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeView>,
    /// In a cluster: which peers' figures are in the sums.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerAnswer>,
}

fn status(client: &ControlClient, output: Output) -> Result<(), ClientError> {
    let s = client.cluster_snapshot(None)?;
    let status = Status {
        version: s.version,
        edges_connected: s.edges.iter().filter(|e| e.health == EdgeHealth::Connected).count(),
        edges_total: s.edges.len(),
        mappings_active: s.mappings.iter().filter(|m| m.state == MappingState::Active).count(),
        mappings_total: s.mappings.len(),
        edges: s.edges,
        mappings: s.mappings,
        nodes: s.nodes,
        peers: s.peers,
    };
    print(output, &status, |s| {
        let mut head = format!(
            "relay-cloud {} at {}: {}/{} edges connected, {}/{} mappings active",
            tunnel::untrusted::escape(&s.version),
            client.endpoint(),
            s.edges_connected,
            s.edges_total,
            s.mappings_active,
            s.mappings_total,
        );
        let mut nodes = String::new();
        if !s.nodes.is_empty() {
            let ready = s.nodes.iter().filter(|n| n.ready).count();
            head.push_str(&format!(
                "; cluster of {} nodes, {ready} ready, figures summed over the nodes",
                s.nodes.len()
            ));
            if let Some(missing) = crate::cluster::missing_peers(&s.peers) {
                head.push_str(&format!("\n{missing}"));
            }
            nodes = format!("{}\n", crate::cluster::nodes_table(&s.nodes, now_ms()));
        }
        format!("{head}\n\n{nodes}{}\n{}", edges_table(&s.edges), mappings_table(&s.mappings))
    });
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn health(h: EdgeHealth) -> &'static str {
    match h {
        EdgeHealth::Connected => "connected",
        EdgeHealth::Reconnecting => "reconnecting",
        EdgeHealth::Down => "down",
    }
}

fn edges_table(edges: &[EdgeView]) -> String {
    let mut t = Table::new(&[
        "EDGE", "HEALTH", "TUNNELS", "RTT P50", "RTT P99", "CPU", "VERSION", "SOURCE",
    ]);
    for e in edges {
        let source = match (e.source, e.previous_token_until_unix_ms) {
            (api::EdgeSource::Config, None) => "config".to_owned(),
            (api::EdgeSource::Runtime, None) => "runtime".to_owned(),
            (_, Some(_)) => "rotating".to_owned(),
        };
        t.row(vec![
            if e.draining { format!("{} (draining)", e.id) } else { e.id.clone() },
            if e.revoked { "revoked".into() } else { health(e.health).into() },
            format!("{}/{}", e.tunnels_up, e.tunnels_configured.max(e.tunnels_up)),
            e.rtt_p50_us.map_or("-".into(), format::micros),
            e.rtt_p99_us.map_or("-".into(), format::micros),
            e.cpu_percent.map_or("-".into(), |c| format!("{c:.0}%")),
            e.version.clone().unwrap_or_else(|| "-".into()),
            source,
        ]);
    }
    t.render()
}

fn mappings_table(mappings: &[MappingView]) -> String {
    let mut t = Table::new(&[
        "MAPPING", "STATE", "LISTEN", "EDGE", "TARGET", "PROBE", "CONNS", "IN", "OUT",
    ]);
    for m in mappings {
        let state = match m.state {
            MappingState::Active => "active".to_owned(),
            MappingState::Draining => {
                format!("draining ({}s left)", m.drain_remaining_ms.unwrap_or(0).div_ceil(1000))
            }
            MappingState::Failed => format!("failed: {}", m.error.clone().unwrap_or_default()),
        };
        let state = match (m.state, crate::cluster::mapping_on_nodes_brief(m)) {
            (MappingState::Draining, Some(nodes)) => format!("{state}; {nodes}"),
            (_, Some(nodes)) => nodes,
            (_, None) => state,
        };
        let state = if m.edge_revoked { format!("{state} (edge revoked)") } else { state };
        let listen = m.bound.clone().unwrap_or_else(|| m.spec.listen.clone());
        // A shared address: the name this mapping takes there.
        let listen = match &m.spec.host {
            Some(host) => format!("{listen} {host}"),
            None => listen,
        };
        t.row(vec![
            m.spec.name.clone(),
            state,
            listen,
            m.spec.edge.clone(),
            m.spec.target.clone(),
            format::probe(m.probe.as_ref()),
            m.active_connections.to_string(),
            format::rate(m.throughput_in_bps),
            format::rate(m.throughput_out_bps),
        ]);
    }
    let mut out = t.render();
    for line in mappings.iter().flat_map(crate::cluster::node_errors) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use api::EdgeHealth;

    use super::*;

    fn edge(version: &str) -> EdgeView {
        EdgeView {
            id: "site-a".into(),
            health: EdgeHealth::Connected,
            tunnels_up: 2,
            tunnels_configured: 2,
            tunnels: Vec::new(),
            draining: false,
            last_seen_unix_ms: None,
            rtt_p50_us: None,
            rtt_p99_us: None,
            version: Some(version.into()),
            cpu_percent: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            connect_failures: 0,
            node_links: Vec::new(),
            source: api::EdgeSource::Config,
            groups: Vec::new(),
            revoked: false,
            previous_token_until_unix_ms: None,
            enrolment: None,
        }
    }

    #[test]
    fn a_mapping_failed_on_one_node_names_it_below_the_table() {
        let mut m = crate::tui::fixtures::cluster_snapshot().mappings.pop().expect("web");
        m.spec.name = "web".into();
        let out = mappings_table(&[m]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].contains(" active on 2/3; failed on c "), "{out}");
        assert_eq!(
            lines[2],
            "web: failed on c: cannot listen on 0.0.0.0:8080: Address already in use (os error 98)"
        );
    }

    #[test]
    fn an_edge_reported_version_cannot_send_escape_sequences_to_the_terminal() {
        // Clear the screen, retitle the window, reverse the text's direction.
        let hostile = "0.1.0\u{1b}[2J\u{1b}]0;pwned\u{7}\r\n\u{202e}evil";
        let out = edges_table(&[edge(hostile)]);
        assert!(!out.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']), "{out:?}");
        assert_eq!(out.lines().count(), 2, "one header and one row: {out:?}");
        assert!(out.contains("0.1.0\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\r\\n\\u{202e}evil"), "{out}");
    }
}
