//! The event log's bodies: `GET /v1/events` ([`EventsPage`]) and each
//! message of `GET /v1/events/stream` (one [`Event`]).

use serde::{Deserialize, Serialize};

/// Default `limit` of `GET /v1/events`.
pub const DEFAULT_EVENTS_LIMIT: usize = 1000;
/// Largest `limit` of `GET /v1/events`; a larger one is cut to it.
pub const MAX_EVENTS_LIMIT: usize = 10_000;

/// Something that happened on a cloud agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in this agent's log: 1, 2, 3, ... without gaps, and it
    /// continues across restarts. A client that sees a jump missed events.
    pub seq: u64,
    /// When it was recorded, in milliseconds since the Unix epoch; never
    /// before the previous event's (a clock stepped back does not reorder
    /// the log).
    pub at_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// What it happened to: a mapping name, an edge id or a node id.
    pub subject: String,
    /// A short sentence for people (at most 200 characters, control
    /// characters escaped).
    pub text: String,
    /// In a cluster: the node that recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What an [`Event`] records; a stable `snake_case` string on the wire.
/// New kinds are added as variants; a client reads a kind it does not know
/// as [`Other`](Self::Other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A tunnel of an edge was registered (subject: the edge).
    TunnelUp,
    /// A tunnel of an edge closed; the text says why (subject: the edge).
    TunnelDown,
    /// A mapping started (subject: the mapping; the text says through
    /// which interface: `config`, `api` or `batch`).
    MappingAdded,
    /// A mapping began to drain (subject: the mapping).
    MappingDrained,
    /// A mapping was removed (subject: the mapping).
    MappingRemoved,
    /// An edge was drained: no new connections go to it (subject: the edge).
    EdgeDrained,
    /// A drained edge takes new connections again (subject: the edge).
    EdgeUndrained,
    /// A cluster node joined the node list (subject: the node).
    NodeJoined,
    /// A cluster node left the node list (subject: the node).
    NodeLeft,
    /// A limit began to refuse: a mapping's `max_connections`, an edge's
    /// tunnel cap. At most one per subject and interval; the text counts
    /// the refusals in between.
    LimitHit,
    /// An edge was added at run time (subject: the edge).
    EdgeAdded,
    /// A run-time edge was removed (subject: the edge).
    EdgeRemoved,
    /// An edge was revoked (subject: the edge).
    EdgeRevoked,
    /// An edge got a new token (subject: the edge; the text gives the
    /// grace of the old one).
    TokenRotated,
    /// An enrolment code was made for an edge (subject: the edge).
    EnrolmentCodeMade,
    /// An enrolment code was redeemed: the edge has its own token (subject:
    /// the edge; the text names the redeeming host and address).
    EdgeEnrolled,
    /// The config file was reloaded (subject: `config`; the text counts
    /// what was applied and what was not).
    ConfigReloaded,
    /// A mapping's end-to-end probe changed status (subject: the mapping;
    /// the text has the new status, the edge's answer and the latency).
    ProbeChanged,
    /// A mapping's traffic policy was replaced (subject: the mapping; the
    /// text has the new policy).
    PolicyChanged,
    /// A kind this build does not know (from a newer agent).
    #[serde(other)]
    Other,
}

impl EventKind {
    /// Every kind this build records, in a stable order.
    pub const ALL: [EventKind; 19] = [
        Self::TunnelUp,
        Self::TunnelDown,
        Self::MappingAdded,
        Self::MappingDrained,
        Self::MappingRemoved,
        Self::EdgeDrained,
        Self::EdgeUndrained,
        Self::NodeJoined,
        Self::NodeLeft,
        Self::LimitHit,
        Self::EdgeAdded,
        Self::EdgeRemoved,
        Self::EdgeRevoked,
        Self::TokenRotated,
        Self::EnrolmentCodeMade,
        Self::EdgeEnrolled,
        Self::ConfigReloaded,
        Self::ProbeChanged,
        Self::PolicyChanged,
    ];

    /// The wire name: `tunnel_up`, `limit_hit`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TunnelUp => "tunnel_up",
            Self::TunnelDown => "tunnel_down",
            Self::MappingAdded => "mapping_added",
            Self::MappingDrained => "mapping_drained",
            Self::MappingRemoved => "mapping_removed",
            Self::EdgeDrained => "edge_drained",
            Self::EdgeUndrained => "edge_undrained",
            Self::NodeJoined => "node_joined",
            Self::NodeLeft => "node_left",
            Self::LimitHit => "limit_hit",
            Self::EdgeAdded => "edge_added",
            Self::EdgeRemoved => "edge_removed",
            Self::EdgeRevoked => "edge_revoked",
            Self::TokenRotated => "token_rotated",
            Self::EnrolmentCodeMade => "enrolment_code_made",
            Self::EdgeEnrolled => "edge_enrolled",
            Self::ConfigReloaded => "config_reloaded",
            Self::PolicyChanged => "policy_changed",
            Self::ProbeChanged => "probe_changed",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/events?since=SEQ&limit=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsPage {
    /// Events with `seq > since`, oldest first, at most `limit`.
    pub events: Vec<Event>,
    /// The oldest seq the agent still holds (`None` while the log is
    /// empty). When it is greater than `since + 1`, events in between are
    /// gone: the log keeps `[events] max_events`.
    pub oldest_seq: Option<u64>,
    /// The newest seq recorded (0 when none ever was). When it is beyond
    /// the last event of `events`, ask again from there.
    pub last_seq: u64,
    /// Events the agent could not record since it started (its queue was
    /// full): they have no seq and are lost.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_snake_case_and_unknown_ones_read_as_other() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        let newer: EventKind = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(newer, EventKind::Other);
    }

    #[test]
    fn event_wire_format() {
        let event = Event {
            seq: 7,
            at_unix_ms: 1_700_000_000_000,
            kind: EventKind::TunnelDown,
            subject: "site-a".into(),
            text: "tunnel 3 closed: heartbeat timeout".into(),
            node: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"seq":7,"at_unix_ms":1700000000000,"kind":"tunnel_down","subject":"site-a","text":"tunnel 3 closed: heartbeat timeout"}"#
        );
    }
}
