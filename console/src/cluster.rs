//! A cluster of cloud agents as `relayctl` shows it: `relayctl nodes ...`,
//! the nodes table, where a mapping stands on each node, and what each
//! node did with a change. Pure text functions apart from [`run`].

use std::time::{SystemTime, UNIX_EPOCH};

use api::{MappingView, NodeApply, NodeMappingState, NodeView, PeerAnswer};

use crate::cli::{NodesCommand, Output};
use crate::client::{ClientError, ControlClient};
use crate::format;
use crate::table::Table;

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs a `nodes` subcommand.
///
/// # Errors
/// The client's; [`ClientError::NotACluster`] when the agent runs alone.
pub(crate) fn run(
    client: &ControlClient,
    command: NodesCommand,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        NodesCommand::List => {
            let nodes = client.nodes()?;
            crate::commands::print(output, &nodes, |n| nodes_table(n, unix_ms()));
        }
        NodesCommand::Drain { node, deadline } => {
            let view = client.drain_node(&node, deadline.map(|d| d.as_secs()))?;
            let within = view
                .as_ref()
                .and_then(|v| v.drain_deadline_unix_ms)
                .map(|at| format::duration_ms(at.saturating_sub(unix_ms())))
                .or_else(|| deadline.map(|d| format::duration_ms(d.as_millis() as u64)))
                .unwrap_or_else(|| "the default 30s".to_owned());
            let open = view.as_ref().map_or(0, |v| v.connections);
            crate::commands::done(
                output,
                &view,
                &format!(
                    "node {node} draining: it reports not-ready; its {open} open connection(s) \
                     may finish within {within}"
                ),
            );
        }
        NodesCommand::Undrain { node } => {
            let view = client.undrain_node(&node)?;
            crate::commands::done(
                output,
                &view,
                &format!("node {node} takes new connections again"),
            );
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

/// The nodes as a table, then one line per mapping a node could not serve
/// and a note on the node that answered (marked `*`). `now_ms` counts a
/// drain's time left down.
pub(crate) fn nodes_table(nodes: &[NodeView], now_ms: u64) -> String {
    let mut t = Table::new(&[
        "NODE", "READY", "DRAINING", "STORE", "REVISION", "CONNS", "EDGES", "FAILURES",
    ]);
    for n in nodes {
        let draining = match (n.draining, n.drain_deadline_unix_ms) {
            (false, _) => "no".to_owned(),
            (true, Some(at)) => {
                format!("yes ({} left)", format::duration_ms(at.saturating_sub(now_ms)))
            }
            (true, None) => "yes".to_owned(),
        };
        t.row(vec![
            if n.this_node { format!("{} *", n.id) } else { n.id.clone() },
            yes_no(n.ready),
            draining,
            if n.store_reachable { "reachable".into() } else { "unreachable".into() },
            n.applied_revision.to_string(),
            n.connections.to_string(),
            n.edges_connected.to_string(),
            n.mapping_failures.len().to_string(),
        ]);
    }
    let mut out = t.render();
    for n in nodes {
        for f in &n.mapping_failures {
            let line = format!("failed on {}: {}: {}", n.id, f.mapping, f.error);
            out.push_str(&tunnel::untrusted::escape_owned(line));
            out.push('\n');
        }
    }
    if nodes.iter().any(|n| n.this_node) {
        out.push_str("* the node that answered\n");
    }
    out
}

/// Where a mapping stands across the nodes: `active on 2/3; failed on c:
/// <error>`; `None` when the agent runs alone.
pub(crate) fn mapping_on_nodes(m: &MappingView) -> Option<String> {
    summary(m, true)
}

/// [`mapping_on_nodes`] without the errors, for a table cell: `active on
/// 2/3; failed on c` (the errors go below the table: [`node_errors`]).
pub(crate) fn mapping_on_nodes_brief(m: &MappingView) -> Option<String> {
    summary(m, false)
}

/// One line per node that failed a mapping: `web: failed on c: <error>`.
pub(crate) fn node_errors(m: &MappingView) -> Vec<String> {
    m.nodes
        .iter()
        .filter(|n| n.state == NodeMappingState::Failed)
        .map(|n| {
            let why = n.error.as_deref().unwrap_or("no reason given");
            tunnel::untrusted::escape_owned(format!("{}: failed on {}: {why}", m.spec.name, n.node))
        })
        .collect()
}

fn summary(m: &MappingView, errors: bool) -> Option<String> {
    if m.nodes.is_empty() {
        return None;
    }
    let count = |state| m.nodes.iter().filter(|n| n.state == state).count();
    let total = m.nodes.len();
    let mut parts = vec![match m.state {
        api::MappingState::Draining => {
            format!("draining on {}/{total}", count(NodeMappingState::Draining))
        }
        _ => format!("active on {}/{total}", count(NodeMappingState::Active)),
    }];
    for n in &m.nodes {
        match n.state {
            NodeMappingState::Failed if !errors => parts.push(format!("failed on {}", n.node)),
            NodeMappingState::Failed => parts.push(format!(
                "failed on {}: {}",
                n.node,
                n.error.as_deref().unwrap_or("no reason given")
            )),
            NodeMappingState::Pending => parts.push(format!("pending on {}", n.node)),
            NodeMappingState::Draining if m.state != api::MappingState::Draining => {
                parts.push(format!("draining on {}", n.node));
            }
            _ => {}
        }
    }
    Some(parts.join("; "))
}

/// The nodes that failed a mapping, for a short cell: `failed on c` or
/// `failed on b, c`; `None` when none did.
pub(crate) fn failed_nodes(m: &MappingView) -> Option<String> {
    let failed: Vec<&str> = m
        .nodes
        .iter()
        .filter(|n| n.state == NodeMappingState::Failed)
        .map(|n| n.node.as_str())
        .collect();
    (!failed.is_empty()).then(|| format!("failed on {}", failed.join(", ")))
}

/// What each node did with a committed change, one line each, after the
/// revision: `revision 42: applied on a, b` then `node c: not applied
/// within the wait` / `node c: web: <error>`. Empty when alone.
pub(crate) fn change_outcomes(revision: Option<i64>, nodes: &[NodeApply]) -> Vec<String> {
    let mut lines = Vec::new();
    if revision.is_none() && nodes.is_empty() {
        return lines;
    }
    let applied: Vec<&str> = nodes
        .iter()
        .filter(|n| n.applied && n.failures.is_empty())
        .map(|n| n.node.as_str())
        .collect();
    let at = revision.map_or_else(|| "committed".to_owned(), |r| format!("revision {r}"));
    lines.push(match (applied.len(), nodes.len()) {
        (_, 0) => at,
        (0, _) => format!("{at}: applied cleanly on no node"),
        (a, n) => format!("{at}: applied on {a}/{n} ({})", applied.join(", ")),
    });
    for n in nodes {
        if !n.applied {
            lines.push(format!("node {}: not applied within the wait", n.node));
        }
        for f in &n.failures {
            lines.push(format!("node {}: {}: {}", n.node, f.mapping, f.error));
        }
    }
    lines.into_iter().map(tunnel::untrusted::escape_owned).collect()
}

/// The peers whose figures are missing from a cluster snapshot, one line:
/// `no figures from c (timed out)`; `None` when every peer answered.
pub(crate) fn missing_peers(peers: &[PeerAnswer]) -> Option<String> {
    let missing: Vec<String> = peers
        .iter()
        .filter(|p| !p.answered)
        .map(|p| match &p.error {
            Some(e) => format!("{} ({e})", p.node),
            None => p.node.clone(),
        })
        .collect();
    (!missing.is_empty()).then(|| {
        tunnel::untrusted::escape_owned(format!(
            "figures without {}: did not answer",
            missing.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use api::{MappingFailure, MappingOnNode, MappingState};

    use super::*;

    fn node(id: &str) -> NodeView {
        NodeView {
            id: id.into(),
            advertise: format!("ws://{id}:7000"),
            ready: true,
            store_reachable: true,
            applied_revision: 42,
            connections: 7,
            edges_connected: 2,
            ..NodeView::default()
        }
    }

    #[test]
    fn the_nodes_table() {
        let mut a = node("a");
        a.this_node = true;
        let mut b = node("b");
        b.ready = false;
        b.draining = true;
        b.drain_deadline_unix_ms = Some(61_000);
        let mut c = node("c");
        c.store_reachable = false;
        c.applied_revision = 40;
        c.mapping_failures = vec![MappingFailure {
            mapping: "web".into(),
            error: "cannot listen on 0.0.0.0:8080: Address in use".into(),
        }];
        assert_eq!(
            nodes_table(&[a, b, c], 1_000),
            "\
NODE  READY  DRAINING          STORE        REVISION  CONNS  EDGES  FAILURES
a *   yes    no                reachable    42        7      2      0
b     no     yes (1m00s left)  reachable    42        7      2      0
c     yes    no                unreachable  40        7      2      1
failed on c: web: cannot listen on 0.0.0.0:8080: Address in use
* the node that answered
"
        );
    }

    #[test]
    fn a_mapping_across_nodes() {
        let mut m = crate::tui::fixtures::snapshot().mappings.pop().expect("web");
        assert_eq!(mapping_on_nodes(&m), None, "alone");
        let on = |node: &str, state, error: Option<&str>| MappingOnNode {
            node: node.into(),
            state,
            error: error.map(str::to_owned),
        };
        m.nodes = vec![
            on("a", NodeMappingState::Active, None),
            on("b", NodeMappingState::Active, None),
            on("c", NodeMappingState::Failed, Some("port in use")),
        ];
        assert_eq!(
            mapping_on_nodes(&m).as_deref(),
            Some("active on 2/3; failed on c: port in use")
        );
        assert_eq!(failed_nodes(&m).as_deref(), Some("failed on c"));
        assert_eq!(mapping_on_nodes_brief(&m).as_deref(), Some("active on 2/3; failed on c"));
        assert_eq!(node_errors(&m), ["web: failed on c: port in use"]);
        m.state = MappingState::Draining;
        m.nodes[1].state = NodeMappingState::Pending;
        m.nodes[0].state = NodeMappingState::Draining;
        assert_eq!(
            mapping_on_nodes(&m).as_deref(),
            Some("draining on 1/3; pending on b; failed on c: port in use")
        );
    }

    #[test]
    fn what_each_node_did_with_a_change() {
        assert!(change_outcomes(None, &[]).is_empty(), "alone: nothing to say");
        let nodes = vec![
            NodeApply { node: "a".into(), applied: true, failures: Vec::new() },
            NodeApply { node: "b".into(), applied: false, failures: Vec::new() },
            NodeApply {
                node: "c".into(),
                applied: true,
                failures: vec![MappingFailure { mapping: "web".into(), error: "in use".into() }],
            },
        ];
        assert_eq!(
            change_outcomes(Some(42), &nodes),
            [
                "revision 42: applied on 1/3 (a)",
                "node b: not applied within the wait",
                "node c: web: in use"
            ]
        );
        let peers = [
            PeerAnswer { node: "b".into(), answered: true, error: None },
            PeerAnswer { node: "c".into(), answered: false, error: Some("timed out".into()) },
        ];
        assert_eq!(
            missing_peers(&peers).as_deref(),
            Some("figures without c (timed out): did not answer")
        );
        assert_eq!(missing_peers(&peers[..1]), None);
    }
}
