//! The subcommands: one call to the control API each, printed as a table
//! or as JSON. Exit codes: 0 success, 1 bad input, 2 agent unreachable,
//! 3 token refused, 4 change refused by the agent, 5 unexpected answer.

use std::process::ExitCode;

use api::{EdgeHealth, EdgeView, MappingSpec, MappingState, MappingView};
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
        Command::Status => status(client, output),
        Command::Edges(EdgesCommand::List) => {
            client.edges().map(|e| print(output, &e, |e| edges_table(e)))
        }
        Command::Edges(EdgesCommand::Drain { id }) => client.drain_edge(&id).map(|()| {
            done(
                output,
                &serde_json::json!({"edge": id, "draining": true}),
                &format!("edge {id} draining"),
            );
        }),
        Command::Edges(EdgesCommand::Undrain { id }) => client.undrain_edge(&id).map(|()| {
            done(
                output,
                &serde_json::json!({"edge": id, "draining": false}),
                &format!("edge {id} takes new connections again"),
            );
        }),
        Command::Mappings(m) => mappings(client, m, output),
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
        MappingsCommand::Add { name, listen, edge, target, allow, max_connections } => {
            let spec = MappingSpec { name, listen, edge, target, allow, max_connections };
            let view = client.add_mapping(&spec)?;
            let bound = view.bound.clone().unwrap_or_else(|| view.spec.listen.clone());
            done(
                output,
                &view,
                &format!(
                    "added {} on {bound} via edge {} to {}",
                    view.spec.name, view.spec.edge, view.spec.target
                ),
            );
            Ok(())
        }
        MappingsCommand::Drain { name, deadline } => {
            let view = client.drain_mapping(&name, deadline.map(|d| d.as_secs()))?;
            let open = view.as_ref().map_or(0, |v| v.active_connections);
            done(output, &view, &format!("draining {name}: {open} connection(s) open"));
            Ok(())
        }
        MappingsCommand::Remove { name } => {
            client.remove_mapping(&name)?;
            done(
                output,
                &serde_json::json!({"name": name, "removed": true}),
                &format!("removed {name}"),
            );
            Ok(())
        }
    }
}

fn print<T: Serialize>(output: Output, value: &T, table: impl Fn(&T) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => print!("{}", table(value)),
    }
}

fn done<T: Serialize>(output: Output, value: &T, sentence: &str) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => println!("{sentence}"),
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
}

fn status(client: &ControlClient, output: Output) -> Result<(), ClientError> {
    let s = client.snapshot()?;
    let status = Status {
        version: s.version,
        edges_connected: s.edges.iter().filter(|e| e.health == EdgeHealth::Connected).count(),
        edges_total: s.edges.len(),
        mappings_active: s.mappings.iter().filter(|m| m.state == MappingState::Active).count(),
        mappings_total: s.mappings.len(),
        edges: s.edges,
        mappings: s.mappings,
    };
    print(output, &status, |s| {
        format!(
            "relay-cloud {} at {}: {}/{} edges connected, {}/{} mappings active\n\n{}\n{}",
            tunnel::untrusted::escape(&s.version),
            client.endpoint(),
            s.edges_connected,
            s.edges_total,
            s.mappings_active,
            s.mappings_total,
            edges_table(&s.edges),
            mappings_table(&s.mappings)
        )
    });
    Ok(())
}

fn health(h: EdgeHealth) -> &'static str {
    match h {
        EdgeHealth::Connected => "connected",
        EdgeHealth::Reconnecting => "reconnecting",
        EdgeHealth::Down => "down",
    }
}

fn edges_table(edges: &[EdgeView]) -> String {
    let mut t = Table::new(&["EDGE", "HEALTH", "TUNNELS", "RTT P50", "RTT P99", "CPU", "VERSION"]);
    for e in edges {
        t.row(vec![
            if e.draining { format!("{} (draining)", e.id) } else { e.id.clone() },
            health(e.health).into(),
            format!("{}/{}", e.tunnels_up, e.tunnels_configured.max(e.tunnels_up)),
            e.rtt_p50_us.map_or("-".into(), format::micros),
            e.rtt_p99_us.map_or("-".into(), format::micros),
            e.cpu_percent.map_or("-".into(), |c| format!("{c:.0}%")),
            e.version.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn mappings_table(mappings: &[MappingView]) -> String {
    let mut t = Table::new(&["MAPPING", "STATE", "LISTEN", "EDGE", "TARGET", "CONNS", "IN", "OUT"]);
    for m in mappings {
        let state = match m.state {
            MappingState::Active => "active".to_owned(),
            MappingState::Draining => {
                format!("draining ({}s left)", m.drain_remaining_ms.unwrap_or(0).div_ceil(1000))
            }
            MappingState::Failed => format!("failed: {}", m.error.clone().unwrap_or_default()),
        };
        t.row(vec![
            m.spec.name.clone(),
            state,
            m.bound.clone().unwrap_or_else(|| m.spec.listen.clone()),
            m.spec.edge.clone(),
            m.spec.target.clone(),
            m.active_connections.to_string(),
            format::rate(m.throughput_in_bps),
            format::rate(m.throughput_out_bps),
        ]);
    }
    t.render()
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
        }
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
