//! How each [`Action`] changes the [`App`], and which calls it asks for.

use api::MappingState;

use super::app::{Action, App, Confirm, Focus, Mode, Request, Status};
use super::enrol::EnrolForm;
use super::form::AddForm;
use crate::format;

/// The drain deadline offered by default.
pub(crate) const DEFAULT_DEADLINE: &str = "30s";

impl App {
    /// Applies `action`; returns a call to make, if any. The rows shown
    /// follow the new state.
    pub(crate) fn update(&mut self, action: Action) -> Option<Request> {
        let request = self.apply(action);
        self.reindex();
        request
    }

    fn apply(&mut self, action: Action) -> Option<Request> {
        match action {
            Action::Quit => self.quit = true,
            Action::Tick(now_ms) => self.now_ms = self.now_ms.max(now_ms),
            Action::Snapshot { result, now_ms } => self.on_snapshot(result, now_ms),
            Action::Finished { request, result } => return self.on_finished(request, result),
            Action::Enrolled { request, result } => return self.on_enrolled(&request, result),
            Action::Endpoint(endpoint) => {
                // Another node's log: its seqs are its own, so what is
                // held would hide its events (older seqs are skipped).
                if endpoint != self.endpoint {
                    self.events = super::events::EventFeed::default();
                }
                self.endpoint = endpoint;
            }
            Action::Events(events) => self.events.add(events),
            action => {
                return match std::mem::replace(&mut self.mode, Mode::Normal) {
                    Mode::Normal => self.normal(action),
                    Mode::Filter => self.filter(action),
                    Mode::Help => {
                        if !matches!(action, Action::Cancel | Action::OpenHelp | Action::Confirm) {
                            self.mode = Mode::Help;
                        }
                        None
                    }
                    Mode::Events => {
                        self.events_view(action);
                        None
                    }
                    Mode::Edge(id) => {
                        self.edge_view(id, action);
                        None
                    }
                    Mode::Add(form) => self.form(form, action),
                    Mode::Enrol(form) => self.enrol_form(form, action),
                    Mode::Enrolled(ticket) => {
                        if !matches!(action, Action::Cancel | Action::Confirm) {
                            self.mode = Mode::Enrolled(ticket);
                        }
                        None
                    }
                    Mode::Confirm(confirm) => self.confirm(confirm, action),
                };
            }
        }
        None
    }

    pub(super) fn say(&mut self, text: impl Into<String>, error: bool) {
        self.status = Some(Status { text: text.into(), error });
    }

    fn send(&mut self, request: Request) -> Option<Request> {
        self.busy = Some(request.progress());
        self.in_flight += 1;
        Some(request)
    }

    fn normal(&mut self, action: Action) -> Option<Request> {
        match action {
            Action::Up => self.step(-1),
            Action::Down => self.step(1),
            Action::PageUp => self.step(-(self.page() as isize)),
            Action::PageDown => self.step(self.page() as isize),
            Action::First => self.step(isize::MIN / 2),
            Action::Last => self.step(isize::MAX / 2),
            Action::CycleSort => {
                self.sort = self.sort.next();
                self.say(format!("sorted by {}", self.sort.word()), false);
            }
            Action::ToggleProblems => {
                self.problems_only = !self.problems_only;
                let text = if self.problems_only {
                    "problems only: p shows everything again"
                } else {
                    "showing everything"
                };
                self.say(text, false);
            }
            Action::OpenEdge if self.focus == Focus::Edges => match self.selected_edge() {
                Some(edge) => self.mode = Mode::Edge(edge.id.clone()),
                None => self.say("no edge to show", true),
            },
            Action::ToggleFocus => {
                self.focus = match self.focus {
                    Focus::Mappings => Focus::Edges,
                    Focus::Edges if !self.nodes().is_empty() => Focus::Nodes,
                    Focus::Edges | Focus::Nodes => Focus::Mappings,
                }
            }
            Action::OpenHelp => self.mode = Mode::Help,
            Action::OpenEvents => self.mode = Mode::Events,
            Action::OpenFilter => self.mode = Mode::Filter,
            Action::Cancel => {
                self.filter.clear();
                self.status = None;
            }
            Action::OpenEnrol => self.mode = Mode::Enrol(EnrolForm::default()),
            Action::OpenAdd => {
                let edges = self.edges().iter().map(|e| e.id.clone()).collect();
                self.mode = Mode::Add(AddForm::new(edges));
            }
            Action::OpenDrain | Action::OpenRemove => self.open_mapping_confirm(&action),
            Action::OpenDrainEdgeOrNode if self.focus == Focus::Nodes => self.open_node_confirm(),
            Action::OpenDrainEdgeOrNode => match (self.focus, self.selected_edge()) {
                (Focus::Edges, Some(edge)) => {
                    let (id, draining) = (edge.id.clone(), edge.draining);
                    let mappings = self.mappings_on(&id);
                    self.mode = Mode::Confirm(if draining {
                        Confirm::UndrainEdge { id, mappings }
                    } else {
                        Confirm::DrainEdge { id, mappings }
                    });
                }
                (Focus::Edges, None) => self.say("no edge to drain", true),
                _ => self.say("D drains an edge or a node: press Tab to select one first", true),
            },
            Action::OpenRevoke => match (self.focus, self.selected_edge()) {
                (Focus::Edges, Some(edge)) if edge.revoked => {
                    let id = edge.id.clone();
                    self.say(format!("edge {id} is already revoked"), true);
                }
                (Focus::Edges, Some(edge)) => {
                    let id = edge.id.clone();
                    let mappings = self.mappings_on(&id);
                    self.mode = Mode::Confirm(Confirm::RevokeEdge { id, mappings });
                }
                (Focus::Edges, None) => self.say("no edge to revoke", true),
                _ => self.say("R revokes an edge: press Tab to select one first", true),
            },
            _ => {}
        }
        None
    }

    /// Keys in the events view: scroll, help, or back.
    fn events_view(&mut self, action: Action) {
        /// Events a page key moves by.
        const PAGE: isize = 10;
        match action {
            Action::Up => self.events.scroll_by(-1),
            Action::Down => self.events.scroll_by(1),
            Action::PageUp => self.events.scroll_by(-PAGE),
            Action::PageDown => self.events.scroll_by(PAGE),
            Action::First => self.events.scroll_by(isize::MIN / 2),
            Action::Last => self.events.scroll_by(isize::MAX / 2),
            Action::OpenHelp => self.mode = Mode::Help,
            Action::OpenEvents | Action::Cancel => {}
            _ => {}
        }
        if !matches!(action, Action::OpenEvents | Action::Cancel | Action::OpenHelp) {
            self.mode = Mode::Events;
        }
    }

    /// Keys in an edge's view: back, or on to another edge.
    fn edge_view(&mut self, id: String, action: Action) {
        match action {
            Action::OpenEvents => self.mode = Mode::Events,
            Action::OpenHelp => self.mode = Mode::Help,
            Action::Cancel | Action::OpenEdge | Action::Confirm => {}
            Action::Up | Action::Down => {
                self.selected_edge = Some(id);
                self.focus = Focus::Edges;
                self.step(if action == Action::Up { -1 } else { 1 });
                let next = self.selected_edge().map_or_else(String::new, |e| e.id.clone());
                self.mode = Mode::Edge(next);
            }
            _ => self.mode = Mode::Edge(id),
        }
    }

    /// Rows a page key moves by in the focused table.
    fn page(&self) -> usize {
        let [edges, nodes, mappings] = self.page_rows.get();
        match self.focus {
            Focus::Edges => edges,
            Focus::Nodes => nodes,
            Focus::Mappings => mappings,
        }
        .max(1)
    }

    /// The mappings an edge carries, its groups' too.
    fn mappings_on(&self, edge: &str) -> usize {
        match (self.snapshot.as_ref(), self.edge(edge)) {
            (Some(s), Some(e)) => super::order::carried_by(s, e).count(),
            _ => 0,
        }
    }

    fn open_node_confirm(&mut self) {
        let Some(node) = self.selected_node() else {
            return self.say("no node to drain", true);
        };
        let (id, open) = (node.id.clone(), node.connections);
        self.mode = Mode::Confirm(if node.draining {
            Confirm::UndrainNode { id }
        } else {
            let deadline = DEFAULT_DEADLINE.to_owned();
            Confirm::DrainNode { id, open, deadline, error: None }
        });
    }

    fn open_mapping_confirm(&mut self, action: &Action) {
        if self.focus != Focus::Mappings {
            return self.say("press Tab to select a mapping first", true);
        }
        let Some(m) = self.selected_mapping() else {
            return self.say("no mapping selected", true);
        };
        let (name, open) = (m.spec.name.clone(), m.active_connections);
        let draining = m.state == MappingState::Draining;
        if *action == Action::OpenDrain {
            if draining {
                return self.say(format!("{name} is already draining"), true);
            }
            let deadline = DEFAULT_DEADLINE.to_owned();
            self.mode = Mode::Confirm(Confirm::Drain { name, open, deadline, error: None });
        } else {
            self.mode = Mode::Confirm(Confirm::Remove { name, open });
        }
    }

    /// Moves the selection in the focused table.
    fn step(&mut self, delta: isize) {
        let move_to = |current: Option<usize>, len: usize| {
            current.map(|i| (i as isize + delta).clamp(0, len as isize - 1) as usize)
        };
        match self.focus {
            Focus::Mappings => {
                let visible = self.visible_mappings();
                let next = move_to(self.mapping_index(), visible.len());
                self.selected_mapping = next.map(|i| visible[i].spec.name.clone());
            }
            Focus::Edges => {
                let visible = self.visible_edges();
                let next = move_to(self.edge_index(), visible.len());
                self.selected_edge = next.map(|i| visible[i].id.clone());
            }
            Focus::Nodes => {
                let next = move_to(self.node_index(), self.nodes().len());
                self.selected_node = next.map(|i| self.nodes()[i].id.clone());
            }
        }
    }

    fn filter(&mut self, action: Action) -> Option<Request> {
        match action {
            Action::Cancel => self.filter.clear(),
            Action::Confirm => {}
            Action::Input(c) => self.filter.push(c),
            Action::Backspace => _ = self.filter.pop(),
            Action::ClearInput => self.filter.clear(),
            Action::Up => self.step(-1),
            Action::Down => self.step(1),
            _ => {}
        }
        if !matches!(action, Action::Cancel | Action::Confirm) {
            self.mode = Mode::Filter;
        }
        None
    }

    fn form(&mut self, mut form: AddForm, action: Action) -> Option<Request> {
        let submit = match action {
            Action::Cancel => return None,
            _ if form.pending => false,
            Action::Left | Action::Right => {
                form.cycle_edge(if action == Action::Left { -1 } else { 1 });
                false
            }
            action => edit(&mut form, action),
        };
        let request = if submit {
            match form.validate() {
                Ok(spec) => {
                    form.error = None;
                    form.server_error = None;
                    form.pending = true;
                    self.send(Request::Add(Box::new(spec)))
                }
                Err((field, message)) => {
                    form.focus = field;
                    form.error = Some((field, message));
                    None
                }
            }
        } else {
            None
        };
        self.mode = Mode::Add(form);
        request
    }

    fn enrol_form(&mut self, mut form: EnrolForm, action: Action) -> Option<Request> {
        let submit = match action {
            Action::Cancel => return None,
            _ if form.pending => false,
            action => edit(&mut form, action),
        };
        let request = if submit {
            match form.validate() {
                Ok(request) => {
                    (form.error, form.server_error, form.pending) = (None, None, true);
                    self.send(Request::Enroll(request))
                }
                Err((field, message)) => {
                    form.focus = field;
                    form.error = Some((field, message));
                    None
                }
            }
        } else {
            None
        };
        self.mode = Mode::Enrol(form);
        request
    }

    fn confirm(&mut self, mut confirm: Confirm, action: Action) -> Option<Request> {
        match (action, &mut confirm) {
            (Action::Cancel, _) => None,
            (Action::Confirm, Confirm::Drain { name, deadline, error, .. }) => {
                match format::parse_duration(deadline) {
                    Ok(deadline_secs) => {
                        let name = name.clone();
                        self.send(Request::Drain { name, deadline_secs })
                    }
                    Err(message) => {
                        *error = Some(message);
                        self.mode = Mode::Confirm(confirm);
                        None
                    }
                }
            }
            (Action::Confirm, Confirm::Remove { name, .. }) => {
                let name = name.clone();
                self.send(Request::Remove { name })
            }
            (Action::Confirm, Confirm::DrainEdge { id, .. }) => {
                let id = id.clone();
                self.send(Request::DrainEdge { id })
            }
            (Action::Confirm, Confirm::UndrainEdge { id, .. }) => {
                let id = id.clone();
                self.send(Request::UndrainEdge { id })
            }
            (Action::Confirm, Confirm::RevokeEdge { id, .. }) => {
                let id = id.clone();
                self.send(Request::RevokeEdge { id })
            }
            (Action::Confirm, Confirm::DrainNode { id, deadline, error, .. }) => {
                match format::parse_duration(deadline) {
                    Ok(deadline_secs) => {
                        let id = id.clone();
                        self.send(Request::DrainNode { id, deadline_secs })
                    }
                    Err(message) => {
                        *error = Some(message);
                        self.mode = Mode::Confirm(confirm);
                        None
                    }
                }
            }
            (Action::Confirm, Confirm::UndrainNode { id }) => {
                let id = id.clone();
                self.send(Request::UndrainNode { id })
            }
            (
                action,
                Confirm::Drain { deadline, error, .. } | Confirm::DrainNode { deadline, error, .. },
            ) => {
                match action {
                    Action::Input(c) => deadline.push(c),
                    Action::Backspace => _ = deadline.pop(),
                    Action::ClearInput => deadline.clear(),
                    _ => {}
                }
                *error = None;
                self.mode = Mode::Confirm(confirm);
                None
            }
            _ => {
                self.mode = Mode::Confirm(confirm);
                None
            }
        }
    }
}

/// The editing keys every form shares; whether `action` submits it
/// (Enter on the last field, or Ctrl-S).
fn edit(form: &mut impl super::form::Fields, action: Action) -> bool {
    match action {
        Action::NextField => form.move_focus(1),
        Action::PrevField => form.move_focus(-1),
        Action::Input(c) => form.input(c),
        Action::Backspace => form.backspace(),
        Action::ClearInput => form.clear(),
        Action::Confirm if !form.on_last() => form.move_focus(1),
        Action::Confirm | Action::Submit => return true,
        _ => {}
    }
    false
}
