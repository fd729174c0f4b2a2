//! How answers from the cloud agent change the [`App`]: snapshots, and
//! the outcomes of changes (shown at once, before the next snapshot).

use api::MappingView;

use super::app::{App, Focus, Link, Mode, Request};
use crate::client::ClientError;
use crate::format;

impl App {
    /// A fetch ended: new data, or the reason there is none (the old data
    /// stays, marked stale).
    pub(super) fn on_snapshot(&mut self, result: Result<api::Snapshot, ClientError>, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        match result {
            Ok(snapshot) => {
                self.snapshot = Some(snapshot);
                self.snapshot_applied();
                self.fetched_ms = Some(now_ms);
                self.link = Link::Up;
            }
            Err(e) => self.link = Link::Down(e),
        }
    }

    /// An enrolment code came back: its dialog opens (and the command is
    /// kept for the exit); a refusal stays in the form.
    pub(super) fn on_enrolled(
        &mut self,
        request: &super::enrol::EnrolRequest,
        result: Result<api::EnrolmentTicket, ClientError>,
    ) -> Option<Request> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.busy = None;
        }
        match result {
            Ok(ticket) => {
                let expires = crate::events::time(ticket.expires_unix_ms);
                self.say(
                    format!("enrolment code for {} made, valid until {expires}", request.id),
                    false,
                );
                self.exit_notes.push(format!(
                    "enrolment code for edge {} (valid until {expires}); on the on-prem machine run:\n  {}",
                    ticket.edge_id, ticket.command
                ));
                self.selected_edge = Some(ticket.edge_id.clone());
                self.mode = Mode::Enrolled(Box::new(ticket));
                Some(Request::Refresh)
            }
            Err(e) => {
                match &mut self.mode {
                    Mode::Enrol(form) => {
                        form.pending = false;
                        form.server_error = Some(e.to_string());
                    }
                    _ => self.say(format!("could not enrol {}: {e}", request.id), true),
                }
                None
            }
        }
    }

    /// A change got its answer; on success, asks for a fresh snapshot.
    pub(super) fn on_finished(
        &mut self,
        request: Request,
        result: Result<Option<Box<MappingView>>, ClientError>,
    ) -> Option<Request> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.busy = None;
        }
        let adding = matches!(&self.mode, Mode::Add(f) if f.pending);
        let error = match (&request, result) {
            (Request::Add(_), Err(e)) if adding => {
                if let Mode::Add(form) = &mut self.mode {
                    form.pending = false;
                    form.server_error = Some(e.to_string());
                }
                return None;
            }
            (_, Err(e)) => e,
            (request, Ok(view)) => {
                self.apply_locally(request, view);
                return Some(Request::Refresh);
            }
        };
        let what = match &request {
            Request::Add(spec) => format!("could not add {}", spec.name),
            Request::Drain { name, .. } => format!("could not drain {name}"),
            Request::Remove { name } => format!("could not remove {name}"),
            Request::DrainEdge { id } => format!("could not drain edge {id}"),
            Request::UndrainEdge { id } => format!("could not undrain edge {id}"),
            Request::RevokeEdge { id } => format!("could not revoke edge {id}"),
            Request::DrainNode { id, .. } => format!("could not drain node {id}"),
            Request::UndrainNode { id } => format!("could not undrain node {id}"),
            Request::Enroll(r) => format!("could not enrol {}", r.id),
            Request::Refresh => "could not refresh".to_owned(),
        };
        self.say(format!("{what}: {error}"), true);
        None
    }

    /// Shows a change at once, before the next snapshot confirms it.
    fn apply_locally(&mut self, request: &Request, view: Option<Box<MappingView>>) {
        let view = view.map(|v| *v);
        // The snapshot changes here: the rows follow.
        self.snapshot_applied();
        let mappings = self.snapshot.as_mut().map(|s| &mut s.mappings);
        match request {
            Request::Add(spec) => {
                if let (Some(mappings), Some(view)) = (mappings, view.clone()) {
                    mappings.retain(|m| m.spec.name != spec.name);
                    mappings.push(view);
                    mappings.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
                }
                if matches!(self.mode, Mode::Add(_)) {
                    self.mode = Mode::Normal;
                }
                self.reindex();
                if !self.visible_mappings().iter().any(|m| m.spec.name == spec.name) {
                    self.filter.clear();
                    self.problems_only = false;
                }
                self.focus = Focus::Mappings;
                self.selected_mapping = Some(spec.name.clone());
                // In a cluster: where it stands on each node, failures named.
                let nodes = view.as_ref().and_then(crate::cluster::mapping_on_nodes);
                let failed = view.as_ref().and_then(crate::cluster::failed_nodes).is_some();
                let on = view.and_then(|v| v.bound).unwrap_or_else(|| spec.listen.clone());
                match nodes {
                    Some(nodes) => {
                        self.say(format!("added {} on {on}: {nodes}", spec.name), failed);
                    }
                    None => self.say(format!("added {} on {on}", spec.name), false),
                }
            }
            Request::Drain { name, deadline_secs } => {
                if let (Some(mappings), Some(view)) = (mappings, view) {
                    mappings
                        .iter_mut()
                        .filter(|m| m.spec.name == *name)
                        .for_each(|m| *m = view.clone());
                }
                let within = format::duration_ms(deadline_secs * 1000);
                self.say(
                    format!("draining {name}: open connections may finish within {within}"),
                    false,
                );
            }
            Request::Remove { name } => {
                if let Some(mappings) = mappings {
                    mappings.retain(|m| m.spec.name != *name);
                }
                self.say(format!("removed {name}"), false);
            }
            Request::DrainEdge { id } => {
                self.say(format!("draining edge {id}: no new connections go to it"), false);
            }
            Request::UndrainEdge { id } => {
                self.say(format!("edge {id} takes new connections again"), false);
            }
            Request::RevokeEdge { id } => {
                self.say(
                    format!("revoked edge {id}: its tunnels are closed and it is refused"),
                    false,
                );
            }
            Request::DrainNode { id, deadline_secs } => {
                let within = format::duration_ms(deadline_secs * 1000);
                self.say(
                    format!(
                        "draining node {id}: it reports not-ready; open connections may finish \
                         within {within}"
                    ),
                    false,
                );
            }
            Request::UndrainNode { id } => {
                self.say(format!("node {id} takes new connections again"), false);
            }
            Request::Enroll(_) | Request::Refresh => {}
        }
    }
}
