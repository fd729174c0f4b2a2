//! The console's state and what it asks the outside world to do. Drawing
//! is in `view`, changes in `update`.

use api::{EdgeView, MappingSpec, MappingView, NodeView, PeerAnswer, Snapshot};

use std::cell::Cell;

use super::enrol::{EnrolForm, EnrolRequest};
use super::events::EventFeed;
use super::form::AddForm;
use super::order::{self, Rows, SortKey};
use super::theme::Theme;
use crate::client::ClientError;

/// Everything that changes the state: keys (mapped by `keys`), the
/// clock, and answers from the cloud agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Quit,
    Up,
    Down,
    ToggleFocus,
    OpenAdd,
    OpenDrain,
    OpenRemove,
    /// `D`: drain or undrain the selected edge, or node.
    OpenDrainEdgeOrNode,
    /// `R`: revoke the selected edge.
    OpenRevoke,
    OpenFilter,
    OpenHelp,
    /// `E`: the events view, or back from it.
    OpenEvents,
    PageUp,
    PageDown,
    /// Home / `g`: the first row.
    First,
    /// End / `G`: the last row.
    Last,
    /// `s`: the next sort key.
    CycleSort,
    /// `p`: problems only, or everything.
    ToggleProblems,
    /// Enter on an edge: its own view.
    OpenEdge,
    /// `n`: the enrol form, for a new site.
    OpenEnrol,
    /// Esc: close what is open, clear the filter.
    Cancel,
    /// Enter (or `y` in a confirmation).
    Confirm,
    /// Ctrl-S in the form.
    Submit,
    NextField,
    PrevField,
    Left,
    Right,
    Input(char),
    Backspace,
    /// Ctrl-U: empty the field.
    ClearInput,
    /// The clock moved on (unix milliseconds).
    Tick(u64),
    /// A snapshot fetch ended at `now_ms`.
    Snapshot {
        result: Result<Snapshot, ClientError>,
        now_ms: u64,
    },
    /// The control API answered at this endpoint (one of several).
    Endpoint(String),
    /// Events newer than those held, oldest first.
    Events(Vec<api::Event>),
    /// An enrolment code was made, or refused.
    Enrolled {
        request: EnrolRequest,
        result: Result<api::EnrolmentTicket, ClientError>,
    },
    /// A change sent to the cloud agent got its answer.
    Finished {
        request: Request,
        result: Result<Option<Box<MappingView>>, ClientError>,
    },
}

/// A call to make off the UI thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Boxed: the largest request by far, and a rare one.
    Add(Box<MappingSpec>),
    /// Make a one-time enrolment code (and the edge, if it is new).
    Enroll(EnrolRequest),
    Drain {
        name: String,
        deadline_secs: u64,
    },
    Remove {
        name: String,
    },
    DrainEdge {
        id: String,
    },
    UndrainEdge {
        id: String,
    },
    RevokeEdge {
        id: String,
    },
    DrainNode {
        id: String,
        deadline_secs: u64,
    },
    UndrainNode {
        id: String,
    },
    /// Fetch a snapshot now rather than at the next second.
    Refresh,
}

impl Request {
    /// What is happening while it runs: "adding web…".
    pub(crate) fn progress(&self) -> String {
        match self {
            Request::Add(spec) => format!("adding {}…", spec.name),
            Request::Enroll(r) => format!("making an enrolment code for {}…", r.id),
            Request::Drain { name, .. } => format!("draining {name}…"),
            Request::Remove { name } => format!("removing {name}…"),
            Request::DrainEdge { id } => format!("draining edge {id}…"),
            Request::UndrainEdge { id } => format!("undraining edge {id}…"),
            Request::RevokeEdge { id } => format!("revoking edge {id}…"),
            Request::DrainNode { id, .. } => format!("draining node {id}…"),
            Request::UndrainNode { id } => format!("undraining node {id}…"),
            Request::Refresh => "refreshing…".to_owned(),
        }
    }
}

/// Which table the arrows move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Focus {
    Mappings,
    Edges,
    /// The nodes of a cluster (only when there are some).
    Nodes,
}

/// A question before a change that hurts if it is a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// Drain a mapping; `deadline` is the text typed.
    Drain {
        name: String,
        open: u64,
        deadline: String,
        error: Option<String>,
    },
    Remove {
        name: String,
        open: u64,
    },
    DrainEdge {
        id: String,
        mappings: usize,
    },
    UndrainEdge {
        id: String,
        mappings: usize,
    },
    RevokeEdge {
        id: String,
        mappings: usize,
    },
    /// Drain a node of a cluster; `deadline` is the text typed.
    DrainNode {
        id: String,
        open: u64,
        deadline: String,
        error: Option<String>,
    },
    UndrainNode {
        id: String,
    },
}

/// What has the keyboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Normal,
    /// Typing the filter.
    Filter,
    Help,
    /// The events view instead of the tables.
    Events,
    /// One edge's view: its tunnels per node, mappings, host, events.
    Edge(String),
    Add(AddForm),
    Confirm(Confirm),
    /// The enrol form.
    Enrol(EnrolForm),
    /// A code was made: the command to run on the on-prem machine.
    Enrolled(Box<api::EnrolmentTicket>),
}

/// How the last snapshot fetch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// Nothing heard yet.
    Connecting,
    Up,
    Down(ClientError),
}

/// A line for the user: the outcome of the last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) text: String,
    pub(crate) error: bool,
}

/// The console's state.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) endpoint: String,
    pub(crate) hint: Option<String>,
    pub(crate) theme: Theme,
    /// Unix milliseconds, from the loop (never read while drawing).
    pub(crate) now_ms: u64,
    pub(crate) snapshot: Option<Snapshot>,
    /// When the last good snapshot arrived (local unix milliseconds).
    pub(crate) fetched_ms: Option<u64>,
    pub(crate) link: Link,
    pub(crate) focus: Focus,
    pub(crate) selected_mapping: Option<String>,
    pub(crate) selected_edge: Option<String>,
    pub(crate) selected_node: Option<String>,
    pub(crate) filter: String,
    pub(crate) sort: SortKey,
    pub(crate) problems_only: bool,
    /// The rows the tables show, for the choices in `rows_for`.
    pub(crate) rows: Rows,
    rows_for: Option<(order::Choice, u64)>,
    /// Snapshots applied so far: the rows follow each.
    snapshots_seen: u64,
    /// Rows each table showed in the last frame (edges, nodes, mappings),
    /// for the page keys; the drawing sets it.
    pub(crate) page_rows: Cell<[usize; 3]>,
    pub(crate) mode: Mode,
    pub(crate) status: Option<Status>,
    /// What runs in the background, and how many calls are out.
    pub(crate) busy: Option<String>,
    pub(crate) in_flight: usize,
    pub(crate) quit: bool,
    /// The newest events, for the events view.
    pub(crate) events: EventFeed,
    /// Printed when the TUI exits: the enrolment commands made (the
    /// screen is gone by then, the text stays in the scrollback).
    pub(crate) exit_notes: Vec<String>,
}

impl App {
    /// A console for `endpoint` that has heard nothing yet.
    pub(crate) fn new(endpoint: &str, hint: Option<String>, theme: Theme, now_ms: u64) -> App {
        App {
            endpoint: endpoint.to_owned(),
            hint,
            theme,
            now_ms,
            snapshot: None,
            fetched_ms: None,
            link: Link::Connecting,
            focus: Focus::Mappings,
            selected_mapping: None,
            selected_edge: None,
            selected_node: None,
            filter: String::new(),
            sort: SortKey::default(),
            problems_only: false,
            rows: Rows::default(),
            rows_for: None,
            snapshots_seen: 0,
            page_rows: Cell::new([10; 3]),
            mode: Mode::Normal,
            status: None,
            busy: None,
            in_flight: 0,
            quit: false,
            events: EventFeed::default(),
            exit_notes: Vec::new(),
        }
    }

    /// Milliseconds since the data was fetched (0 without data).
    pub(crate) fn data_age_ms(&self) -> u64 {
        self.fetched_ms.map_or(0, |at| self.now_ms.saturating_sub(at))
    }

    /// Whether the data shown is not current (the last fetch failed).
    pub(crate) fn stale(&self) -> bool {
        matches!(self.link, Link::Down(_))
    }

    /// The edges, as reported.
    pub(crate) fn edges(&self) -> &[EdgeView] {
        self.snapshot.as_ref().map_or(&[], |s| &s.edges)
    }

    /// Recomputes the rows when the snapshot or a choice changed since.
    pub(crate) fn reindex(&mut self) {
        let choice = order::Choice {
            filter: self.filter.clone(),
            sort: self.sort,
            problems_only: self.problems_only,
        };
        let key = (choice, self.snapshots_seen);
        if self.rows_for.as_ref() == Some(&key) {
            return;
        }
        self.rows = self.snapshot.as_ref().map_or_else(Rows::default, |s| order::rows(s, &key.0));
        self.rows_for = Some(key);
    }

    /// Counts a new snapshot, so the rows are recomputed.
    pub(crate) fn snapshot_applied(&mut self) {
        self.snapshots_seen += 1;
    }

    /// The mappings the filter lets through, in the sort order.
    pub(crate) fn visible_mappings(&self) -> Vec<&MappingView> {
        let all = self.snapshot.as_ref().map_or(&[][..], |s| &s.mappings);
        self.rows.mappings.iter().filter_map(|&i| all.get(i)).collect()
    }

    /// The edges the filter lets through, in the sort order.
    pub(crate) fn visible_edges(&self) -> Vec<&EdgeView> {
        let all = self.edges();
        self.rows.edges.iter().filter_map(|&i| all.get(i)).collect()
    }

    /// Index of the selected mapping among the visible ones.
    pub(crate) fn mapping_index(&self) -> Option<usize> {
        let all = self.snapshot.as_ref().map_or(&[][..], |s| &s.mappings);
        position(&self.rows.mappings, self.selected_mapping.as_deref(), |i| {
            all.get(i).map(|m| m.spec.name.as_str())
        })
    }

    /// The selected mapping, if any is visible.
    pub(crate) fn selected_mapping(&self) -> Option<&MappingView> {
        let i = *self.rows.mappings.get(self.mapping_index()?)?;
        self.snapshot.as_ref()?.mappings.get(i)
    }

    /// Index of the selected edge among the visible ones.
    pub(crate) fn edge_index(&self) -> Option<usize> {
        let all = self.edges();
        position(&self.rows.edges, self.selected_edge.as_deref(), |i| {
            all.get(i).map(|e| e.id.as_str())
        })
    }

    /// The selected edge, if any is visible.
    pub(crate) fn selected_edge(&self) -> Option<&EdgeView> {
        self.edges().get(*self.rows.edges.get(self.edge_index()?)?)
    }

    /// Whether no edge that could carry a mapping on `edge` (an edge, or
    /// each member of a group) is up.
    pub(crate) fn edge_down(&self, edge: &str) -> bool {
        self.snapshot.is_some() && !self.rows.up.contains(edge)
    }

    /// An edge by id.
    pub(crate) fn edge(&self, id: &str) -> Option<&EdgeView> {
        self.edges().iter().find(|e| e.id == id)
    }

    /// The nodes of the cluster; empty when the agent runs alone.
    pub(crate) fn nodes(&self) -> &[NodeView] {
        self.snapshot.as_ref().map_or(&[], |s| &s.nodes)
    }

    /// Index of the selected node.
    pub(crate) fn node_index(&self) -> Option<usize> {
        let nodes = self.nodes();
        if nodes.is_empty() {
            return None;
        }
        let found =
            self.selected_node.as_ref().and_then(|id| nodes.iter().position(|n| &n.id == id));
        Some(found.unwrap_or(0))
    }

    /// The selected node, if there are nodes.
    pub(crate) fn selected_node(&self) -> Option<&NodeView> {
        self.node_index().map(|i| &self.nodes()[i])
    }

    /// The peers whose figures are missing from the sums.
    pub(crate) fn missing_peers(&self) -> Vec<&PeerAnswer> {
        self.snapshot.iter().flat_map(|s| &s.peers).filter(|p| !p.answered).collect()
    }

    /// Milliseconds left of a node's drain, on the node's clock as of the
    /// snapshot, counted down since.
    pub(crate) fn node_drain_left_ms(&self, n: &NodeView) -> Option<u64> {
        let at = self.snapshot.as_ref()?.at_unix_ms;
        Some(n.drain_deadline_unix_ms?.saturating_sub(at).saturating_sub(self.data_age_ms()))
    }

    /// Milliseconds left of a mapping's drain, counted down since the
    /// snapshot (the deadline passes whether or not we hear about it).
    pub(crate) fn drain_left_ms(&self, m: &MappingView) -> Option<u64> {
        Some(m.drain_remaining_ms?.saturating_sub(self.data_age_ms()))
    }

    /// Milliseconds since an edge was last heard from, on the cloud's
    /// clock (so a skewed local clock does not matter).
    pub(crate) fn edge_silence_ms(&self, e: &EdgeView) -> Option<u64> {
        let seen = e.last_seen_unix_ms?;
        let at = self.snapshot.as_ref()?.at_unix_ms;
        Some(at.saturating_sub(seen) + self.data_age_ms())
    }
}

/// Where the row named `selected` is among `rows` (the first row when it
/// is not there); `None` when there are no rows.
fn position<'a>(
    rows: &[usize],
    selected: Option<&str>,
    name: impl Fn(usize) -> Option<&'a str>,
) -> Option<usize> {
    if rows.is_empty() {
        return None;
    }
    let found = selected.and_then(|want| rows.iter().position(|&i| name(i) == Some(want)));
    Some(found.unwrap_or(0))
}
