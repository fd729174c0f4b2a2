//! Which rows the tables show, in what order: the filter (it reaches
//! edges and the groups mappings use), "problems only", and the sort key.
//! Pure functions of a snapshot, computed once per change of any of them
//! (not per frame), so a fleet of a thousand sites stays cheap to draw.

use std::collections::{HashMap, HashSet};

use api::{EdgeHealth, EdgeView, MappingState, MappingView, ProbeStatus, Snapshot};

/// How the mappings and edges are sorted; `s` cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SortKey {
    /// By name (the config's order is not kept: a fleet is too long).
    #[default]
    Name,
    /// The worst first, then by name.
    Health,
    /// The busiest first (bytes per second in and out).
    Throughput,
    /// The most failures first (failed connections; an edge's failed
    /// destination connects).
    Errors,
}

impl SortKey {
    /// The next key in the cycle.
    pub(crate) fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::Health,
            SortKey::Health => SortKey::Throughput,
            SortKey::Throughput => SortKey::Errors,
            SortKey::Errors => SortKey::Name,
        }
    }

    /// A word for the titles: "sorted by health".
    pub(crate) fn word(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Health => "health",
            SortKey::Throughput => "throughput",
            SortKey::Errors => "errors",
        }
    }
}

/// What the tables show: indices into the snapshot's edges and mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rows {
    pub(crate) edges: Vec<usize>,
    pub(crate) mappings: Vec<usize>,
    /// Edge ids and group names with an edge up that could carry their
    /// mappings ([`names_up`]): a mapping's edge is down when its name is
    /// not here.
    pub(crate) up: HashSet<String>,
}

/// The choices the rows depend on, besides the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) filter: String,
    pub(crate) sort: SortKey,
    pub(crate) problems_only: bool,
}

/// How bad an edge's state is: 0 worst, 3 fine; with a word for it.
pub(crate) fn edge_problem(e: &EdgeView) -> Option<(u8, &'static str)> {
    if e.revoked {
        return Some((0, "revoked"));
    }
    match e.health {
        EdgeHealth::Down => Some((0, "down")),
        EdgeHealth::Reconnecting => Some((1, "reconnecting")),
        EdgeHealth::Connected if e.tunnels_up < e.tunnels_configured => {
            Some((2, "tunnels missing"))
        }
        EdgeHealth::Connected if e.node_links.iter().any(|l| l.tunnels_up == 0) => {
            Some((2, "a node unreached"))
        }
        EdgeHealth::Connected => None,
    }
}

/// How bad a mapping's state is, as [`edge_problem`]. Draining is what an
/// operator asked for, not a problem.
pub(crate) fn mapping_problem(
    m: &MappingView,
    edge_down: impl Fn(&str) -> bool,
) -> Option<(u8, &'static str)> {
    if m.state == MappingState::Failed {
        return Some((0, "failed"));
    }
    if m.edge_revoked {
        return Some((0, "edge revoked"));
    }
    if m.nodes.iter().any(|n| n.state == api::NodeMappingState::Failed) {
        return Some((1, "failed on a node"));
    }
    match m.probe.as_ref().map(|p| p.status) {
        Some(ProbeStatus::NoTunnel) => return Some((1, "probe: no tunnel")),
        Some(ProbeStatus::Failed) => return Some((1, "probe failed")),
        _ => {}
    }
    if edge_down(&m.spec.edge) {
        return Some((1, "edge down"));
    }
    match m.probe.as_ref().map(|p| p.status) {
        Some(ProbeStatus::Slow) => Some((2, "probe slow")),
        _ => None,
    }
}

/// The rows to show for `choice`.
pub(crate) fn rows(snapshot: &Snapshot, choice: &Choice) -> Rows {
    let needle = choice.filter.to_lowercase();
    let by_id: HashMap<&str, &EdgeView> =
        snapshot.edges.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut groups: HashMap<&str, Vec<&EdgeView>> = HashMap::new();
    for e in &snapshot.edges {
        for g in &e.groups {
            groups.entry(g.as_str()).or_default().push(e);
        }
    }
    let up = names_up(snapshot);
    let edge_down = |name: &str| !up.contains(name);
    let hit = |text: &str| needle.is_empty() || text.to_lowercase().contains(&needle);
    // Whether an edge that could carry a mapping on `name` matches.
    let carrier_hit = |name: &str| match by_id.get(name) {
        Some(e) => hit(&e.id),
        None => groups.get(name).is_some_and(|members| members.iter().any(|e| hit(&e.id))),
    };

    let mut edges: Vec<usize> = (0..snapshot.edges.len())
        .filter(|&i| {
            let e = &snapshot.edges[i];
            let shown = hit(&e.id)
                || e.groups.iter().any(|g| hit(g))
                || e.version.as_deref().is_some_and(hit);
            shown && (!choice.problems_only || edge_problem(e).is_some())
        })
        .collect();
    let mut mappings: Vec<usize> = (0..snapshot.mappings.len())
        .filter(|&i| {
            let m = &snapshot.mappings[i];
            let s = &m.spec;
            let shown = [&s.name, &s.edge, &s.target, &s.listen].iter().any(|f| hit(f))
                || (!needle.is_empty() && carrier_hit(&s.edge));
            shown && (!choice.problems_only || mapping_problem(m, edge_down).is_some())
        })
        .collect();

    let severity = |p: Option<(u8, &str)>| p.map_or(3, |(s, _)| s);
    match choice.sort {
        SortKey::Name => {
            edges.sort_by(|&a, &b| snapshot.edges[a].id.cmp(&snapshot.edges[b].id));
            mappings.sort_by(|&a, &b| {
                snapshot.mappings[a].spec.name.cmp(&snapshot.mappings[b].spec.name)
            });
        }
        SortKey::Health => {
            edges.sort_by_cached_key(|&i| {
                let e = &snapshot.edges[i];
                (severity(edge_problem(e)), e.id.clone())
            });
            mappings.sort_by_cached_key(|&i| {
                let m = &snapshot.mappings[i];
                (severity(mapping_problem(m, edge_down)), m.spec.name.clone())
            });
        }
        SortKey::Throughput => {
            edges.sort_by_cached_key(|&i| {
                let e = &snapshot.edges[i];
                let streams: u64 = e.tunnels.iter().map(|t| t.streams).sum();
                (std::cmp::Reverse(streams), e.id.clone())
            });
            mappings.sort_by_cached_key(|&i| {
                let m = &snapshot.mappings[i];
                let rate = m.throughput_in_bps.saturating_add(m.throughput_out_bps);
                (std::cmp::Reverse(rate), m.spec.name.clone())
            });
        }
        SortKey::Errors => {
            edges.sort_by_cached_key(|&i| {
                let e = &snapshot.edges[i];
                (std::cmp::Reverse(e.connect_failures), e.id.clone())
            });
            mappings.sort_by_cached_key(|&i| {
                let m = &snapshot.mappings[i];
                (std::cmp::Reverse(m.failed_connections), m.spec.name.clone())
            });
        }
    }
    Rows { edges, mappings, up }
}

/// The names a mapping's `edge` may hold (an edge id, or a group's name,
/// whose members carry it) for which an edge that could carry it is up:
/// not down, not revoked. An id wins over a group of the same name.
fn names_up(snapshot: &Snapshot) -> HashSet<String> {
    let ids: HashSet<&str> = snapshot.edges.iter().map(|e| e.id.as_str()).collect();
    let mut up = HashSet::new();
    for e in snapshot.edges.iter().filter(|e| e.health != EdgeHealth::Down && !e.revoked) {
        up.insert(e.id.clone());
        up.extend(e.groups.iter().filter(|g| !ids.contains(g.as_str())).cloned());
    }
    up
}

/// The mappings an edge carries: its own, and its groups'.
pub(crate) fn carried_by<'a>(
    snapshot: &'a Snapshot,
    edge: &'a EdgeView,
) -> impl Iterator<Item = &'a MappingView> {
    snapshot
        .mappings
        .iter()
        .filter(move |m| m.spec.edge == edge.id || edge.groups.contains(&m.spec.edge))
}

/// The page of `len` rows, `height` to a page, that holds `selected`:
/// the range to draw. Pages snap, so a frame draws one page of a table of
/// any length and the view does not drift while the data changes.
pub(crate) fn page(len: usize, height: usize, selected: Option<usize>) -> std::ops::Range<usize> {
    let height = height.max(1);
    let start = selected.unwrap_or(0).min(len.saturating_sub(1)) / height * height;
    start..(start + height).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fixtures;

    fn names(snapshot: &Snapshot, rows: &Rows) -> (Vec<String>, Vec<String>) {
        (
            rows.edges.iter().map(|&i| snapshot.edges[i].id.clone()).collect(),
            rows.mappings.iter().map(|&i| snapshot.mappings[i].spec.name.clone()).collect(),
        )
    }

    #[test]
    fn a_filter_reaches_edges_and_the_mappings_they_carry() {
        let mut snapshot = fixtures::snapshot();
        snapshot.edges[1].groups = vec!["east".into()];
        snapshot.mappings[2].spec.edge = "east".into();
        let edge_b = snapshot.edges[1].id.clone();
        let choice = Choice { filter: edge_b.to_uppercase(), ..Choice::default() };
        let (edges, mappings) = names(&snapshot, &rows(&snapshot, &choice));
        assert_eq!(edges, vec![edge_b]);
        // The mapping on group "east" is carried by that edge.
        assert!(mappings.contains(&snapshot.mappings[2].spec.name), "{mappings:?}");
        let by_group = Choice { filter: "east".into(), ..Choice::default() };
        let (edges, _) = names(&snapshot, &rows(&snapshot, &by_group));
        assert_eq!(edges, vec![snapshot.edges[1].id.clone()]);
    }

    #[test]
    fn sort_keys_order_rows_and_break_ties_by_name() {
        let mut snapshot = fixtures::snapshot();
        for (i, m) in snapshot.mappings.iter_mut().enumerate() {
            m.throughput_in_bps = 10 * i as u64;
            m.failed_connections = 0;
        }
        snapshot.mappings[0].failed_connections = 7;
        let order =
            |sort| names(&snapshot, &rows(&snapshot, &Choice { sort, ..Choice::default() })).1;
        let sorted = |mut names: Vec<String>| {
            names.sort();
            names
        };
        let by_name = order(SortKey::Name);
        assert_eq!(by_name, sorted(by_name.clone()));
        let busiest = order(SortKey::Throughput);
        assert_eq!(busiest.first(), snapshot.mappings.last().map(|m| &m.spec.name));
        let errors = order(SortKey::Errors);
        assert_eq!(errors[0], snapshot.mappings[0].spec.name, "the one with failures first");
        let rest = snapshot.mappings[1..].iter().map(|m| m.spec.name.clone()).collect();
        assert_eq!(errors[1..], sorted(rest)[..], "then by name");
        assert_eq!(SortKey::Errors.next(), SortKey::Name);
    }

    #[test]
    fn problems_only_keeps_failed_revoked_down_and_probe_failures() {
        let mut snapshot = fixtures::snapshot();
        for m in &mut snapshot.mappings {
            m.state = MappingState::Active;
            m.edge_revoked = false;
            m.probe = None;
        }
        for e in &mut snapshot.edges {
            e.health = EdgeHealth::Connected;
            e.revoked = false;
            e.tunnels_up = e.tunnels_configured;
        }
        let problems = Choice { problems_only: true, ..Choice::default() };
        let well = rows(&snapshot, &problems);
        assert_eq!((well.edges, well.mappings), (vec![], vec![]), "all is well");

        snapshot.mappings[1].state = MappingState::Draining;
        assert!(rows(&snapshot, &problems).mappings.is_empty(), "draining is no problem");
        snapshot.mappings[1].state = MappingState::Failed;
        snapshot.edges[0].health = EdgeHealth::Reconnecting;
        let (edges, mappings) = names(&snapshot, &rows(&snapshot, &problems));
        assert_eq!(edges, vec![snapshot.edges[0].id.clone()]);
        assert_eq!(mappings, vec![snapshot.mappings[1].spec.name.clone()]);

        // Health first: failed before fine.
        let health = Choice { sort: SortKey::Health, ..Choice::default() };
        let (_, mappings) = names(&snapshot, &rows(&snapshot, &health));
        assert_eq!(mappings[0], snapshot.mappings[1].spec.name);
    }

    #[test]
    fn pages_snap_to_the_selection() {
        assert_eq!(page(0, 10, None), 0..0);
        assert_eq!(page(25, 10, None), 0..10);
        assert_eq!(page(25, 10, Some(9)), 0..10);
        assert_eq!(page(25, 10, Some(10)), 10..20);
        assert_eq!(page(25, 10, Some(24)), 20..25);
        assert_eq!(page(25, 10, Some(99)), 20..25);
        assert_eq!(page(5, 0, Some(3)), 3..4, "a zero-height table still draws its selection");
    }
}
