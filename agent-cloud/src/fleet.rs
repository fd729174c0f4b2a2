//! The fleet: which edges may connect, with which token, and the groups
//! they form. Pure: no I/O.
//!
//! The config file's `[[edges]]` and `[[groups]]` are the baseline. An edge
//! added, given a new token or revoked at run time is an [`EdgeRecord`],
//! kept in the state file (in etcd in a cluster); a record overrides the
//! config-file edge of the same id. Revoking destroys the credential: the
//! record keeps no token, and only a new token (`rotate_token`) lets the
//! edge in again.

use std::collections::BTreeMap;

use config::{EdgeEntry, EdgeGroup, Secret};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// How long the old token stays valid when a rotation names no grace.
pub(crate) const DEFAULT_ROTATION_GRACE_SECS: u64 = 3_600;
/// Random bytes in a token made by the cloud (shown as 64 hex digits).
const TOKEN_BYTES: usize = 32;

/// An edge as changed at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeRecord {
    pub(crate) id: String,
    /// The group it joins (created by its first member), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// The token it authenticates with; empty once revoked.
    pub(crate) token: String,
    /// The token before the last rotation, valid until its deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) previous: Option<PreviousToken>,
    /// Set by a revocation: refused until it gets a new token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) revoked: bool,
    /// Its latest enrolment code (only the digest of its secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) enrolment: Option<EnrolmentRecord>,
}

/// An enrolment code made for an edge. The secret itself is never kept:
/// whoever reads the state file or etcd cannot redeem the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolmentRecord {
    /// [`proto::secret_digest`] of the code's secret.
    pub(crate) secret_sha256: String,
    pub(crate) expires_unix_ms: u64,
    /// Set when redeemed: a code works once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redeemed_unix_ms: Option<u64>,
    /// The host name the redeeming machine gave (escaped when shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redeemed_by: Option<String>,
}

/// The token a rotation replaced, still accepted for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviousToken {
    pub(crate) token: String,
    pub(crate) until_unix_ms: u64,
}

/// Which of an edge's tokens a tunnel proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    Current,
    /// The one before a rotation, during its grace.
    Previous,
}

impl Credential {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Previous => "previous",
        }
    }
}

/// One edge of the fleet, as the handshake and the API see it.
#[derive(Debug, Clone)]
pub(crate) struct FleetEdge {
    /// Whether the config file names it (a record may override it).
    pub(crate) from_config: bool,
    /// The group a run-time record put it in.
    pub(crate) group: Option<String>,
    token: Option<Secret>,
    previous: Option<(Secret, u64)>,
    pub(crate) revoked: bool,
}

impl FleetEdge {
    /// Until when the token before the last rotation is accepted, if it is.
    pub(crate) fn previous_until(&self, now_ms: u64) -> Option<u64> {
        self.previous.as_ref().map(|(_, until)| *until).filter(|until| *until > now_ms)
    }

    /// The token it authenticates with now, if it has one.
    pub(crate) fn current_token(&self) -> Option<&[u8]> {
        self.token.as_ref().map(Secret::expose)
    }

    /// The tokens accepted now, the current one first.
    pub(crate) fn tokens(&self, now_ms: u64) -> Vec<(&[u8], Credential)> {
        if self.revoked {
            return Vec::new();
        }
        let current = self.token.iter().map(|t| (t.expose(), Credential::Current));
        let previous = self
            .previous
            .iter()
            .filter(|(_, until)| *until > now_ms)
            .map(|(t, _)| (t.expose(), Credential::Previous));
        current.chain(previous).collect()
    }
}

/// Every edge and group, as of the last change: the config file's with the
/// run-time records on top.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fleet {
    base: Vec<EdgeEntry>,
    base_groups: Vec<EdgeGroup>,
    records: BTreeMap<String, EdgeRecord>,
    edges: BTreeMap<String, FleetEdge>,
    /// Group id to member edge ids.
    groups: BTreeMap<String, Vec<String>>,
}

impl Fleet {
    /// The config file's edges and groups with `records` on top. A record
    /// whose group is an edge's id is kept out of that group (reported in
    /// `problems`): planning refuses that, so only a hand-written value
    /// gets here.
    pub(crate) fn new<'a>(
        base: &[EdgeEntry],
        base_groups: &[EdgeGroup],
        records: impl IntoIterator<Item = &'a EdgeRecord>,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut fleet = Self {
            base: base.to_vec(),
            base_groups: base_groups.to_vec(),
            records: records.into_iter().map(|r| (r.id.clone(), r.clone())).collect(),
            ..Self::default()
        };
        fleet.derive(problems);
        fleet
    }

    /// The same config baseline with other records.
    pub(crate) fn with_records<'a>(
        &self,
        records: impl IntoIterator<Item = &'a EdgeRecord>,
        problems: &mut Vec<String>,
    ) -> Self {
        Self::new(&self.base, &self.base_groups, records, problems)
    }

    fn derive(&mut self, problems: &mut Vec<String>) {
        let mut edges: BTreeMap<String, FleetEdge> = self
            .base
            .iter()
            .map(|e| {
                let edge = FleetEdge {
                    from_config: true,
                    group: None,
                    token: Some(e.token.clone()),
                    previous: None,
                    revoked: false,
                };
                (e.id.clone(), edge)
            })
            .collect();
        let mut groups: BTreeMap<String, Vec<String>> =
            self.base_groups.iter().map(|g| (g.id.clone(), g.edges.clone())).collect();
        for r in self.records.values() {
            let from_config = edges.get(&r.id).is_some_and(|e| e.from_config);
            let edge = FleetEdge {
                from_config,
                group: r.group.clone(),
                token: (!r.token.is_empty()).then(|| Secret::new(r.token.as_bytes())),
                previous: r
                    .previous
                    .as_ref()
                    .map(|p| (Secret::new(p.token.as_bytes()), p.until_unix_ms)),
                revoked: r.revoked,
            };
            edges.insert(r.id.clone(), edge);
        }
        for (id, edge) in &edges {
            let Some(group) = &edge.group else { continue };
            if edges.contains_key(group) {
                problems.push(format!("edge {id:?}: group {group:?} is an edge's id; ignored"));
                continue;
            }
            let members = groups.entry(group.clone()).or_default();
            if !members.contains(id) {
                members.push(id.clone());
            }
        }
        self.edges = edges;
        self.groups = groups;
    }

    /// The run-time records, by id.
    pub(crate) fn records(&self) -> impl Iterator<Item = &EdgeRecord> {
        self.records.values()
    }

    pub(crate) fn record(&self, id: &str) -> Option<&EdgeRecord> {
        self.records.get(id)
    }

    /// Whether `target` names an edge or a group.
    pub(crate) fn knows(&self, target: &str) -> bool {
        self.edges.contains_key(target) || self.groups.contains_key(target)
    }

    pub(crate) fn is_edge(&self, id: &str) -> bool {
        self.edges.contains_key(id)
    }

    pub(crate) fn is_group(&self, id: &str) -> bool {
        self.groups.contains_key(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&FleetEdge> {
        self.edges.get(id)
    }

    pub(crate) fn edges(&self) -> impl Iterator<Item = (&String, &FleetEdge)> {
        self.edges.iter()
    }

    /// The edge ids `target` stands for: a group's members, or itself.
    pub(crate) fn members(&self, target: &str) -> Vec<String> {
        match self.groups.get(target) {
            Some(members) => members.clone(),
            None => vec![target.to_owned()],
        }
    }

    /// The group ids `id` is a member of.
    pub(crate) fn groups_of(&self, id: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, m)| m.iter().any(|m| m == id))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Every edge and group id, for error messages.
    pub(crate) fn target_names(&self) -> Vec<String> {
        self.edges.keys().chain(self.groups.keys()).cloned().collect()
    }

    /// Whether every edge `target` stands for is revoked (and there is at
    /// least one): its mappings can carry nothing.
    pub(crate) fn all_revoked(&self, target: &str) -> bool {
        let members = self.members(target);
        !members.is_empty()
            && members.iter().all(|id| self.edges.get(id).is_some_and(|e| e.revoked))
    }

    /// The edge whose latest enrolment code has this secret digest.
    pub(crate) fn by_enrolment(&self, secret_sha256: &str) -> Option<&EdgeRecord> {
        // A scan: redemptions are rare and rate-limited, and the digest
        // is of a random secret, so comparing it leaks nothing.
        self.records
            .values()
            .find(|r| r.enrolment.as_ref().is_some_and(|e| e.secret_sha256 == secret_sha256))
    }

    /// Sets a run-time record (as a batch's later changes see it).
    pub(crate) fn put(&mut self, record: EdgeRecord) {
        self.records.insert(record.id.clone(), record);
        self.derive(&mut Vec::new());
    }

    /// Removes a run-time record (as a batch's later changes see it).
    pub(crate) fn remove(&mut self, id: &str) {
        self.records.remove(id);
        self.derive(&mut Vec::new());
    }
}

/// A fresh token: 32 random bytes as 64 hex digits.
///
/// # Errors
/// When the system's random source fails.
pub(crate) fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "the system random source failed")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<EdgeEntry> {
        vec![EdgeEntry { id: "site-a".into(), token: Secret::new(b"config-token".to_vec()) }]
    }

    fn record(id: &str, token: &str) -> EdgeRecord {
        EdgeRecord {
            id: id.into(),
            group: None,
            token: token.into(),
            previous: None,
            revoked: false,
            enrolment: None,
        }
    }

    #[test]
    fn a_record_overrides_the_config_edge_and_a_rotation_keeps_the_old_token_for_its_grace() {
        let mut rotated = record("site-a", "new-token");
        rotated.previous =
            Some(PreviousToken { token: "config-token".into(), until_unix_ms: 1_000 });
        let fleet = Fleet::new(&base(), &[], [&rotated], &mut Vec::new());
        let edge = fleet.get("site-a").unwrap();
        assert!(edge.from_config && fleet.record("site-a").is_some());
        let during: Vec<(&[u8], Credential)> = edge.tokens(999);
        assert_eq!(
            during,
            [
                (&b"new-token"[..], Credential::Current),
                (&b"config-token"[..], Credential::Previous)
            ]
        );
        let after: Vec<(&[u8], Credential)> = edge.tokens(1_000);
        assert_eq!(after, [(&b"new-token"[..], Credential::Current)], "the grace ended");
        assert_eq!(edge.previous_until(999), Some(1_000));
    }

    #[test]
    fn a_revoked_edge_accepts_no_token_and_its_mappings_carry_nothing() {
        let mut revoked = record("site-a", "");
        revoked.revoked = true;
        let groups = [EdgeGroup { id: "pool".into(), edges: vec!["site-a".into()] }];
        let fleet = Fleet::new(&base(), &groups, [&revoked], &mut Vec::new());
        let edge = fleet.get("site-a").unwrap();
        assert!(edge.tokens(0).is_empty(), "no token is accepted");
        assert!(fleet.all_revoked("site-a") && fleet.all_revoked("pool"));
        assert!(!fleet.all_revoked("nobody"));
    }

    #[test]
    fn run_time_edges_form_groups_and_leave_them_when_removed() {
        let mut b = record("b", "tb");
        b.group = Some("pool".into());
        let mut c = record("c", "tc");
        c.group = Some("pool".into());
        let mut bad = record("d", "td");
        bad.group = Some("site-a".into());
        let mut problems = Vec::new();
        let mut fleet = Fleet::new(&base(), &[], [&b, &c, &bad], &mut problems);
        assert_eq!(fleet.members("pool"), ["b", "c"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(fleet.knows("pool") && fleet.is_group("pool") && !fleet.is_edge("pool"));
        fleet.remove("b");
        assert_eq!(fleet.members("pool"), ["c"]);
        fleet.remove("c");
        assert!(!fleet.knows("pool"), "an empty run-time group is gone");
        fleet.put(record("e", "te"));
        assert!(fleet.get("e").is_some_and(|e| !e.from_config));
    }

    #[test]
    fn tokens_are_64_hex_digits_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
