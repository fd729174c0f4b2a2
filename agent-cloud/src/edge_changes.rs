//! Planning the fleet's changes of a batch: add, remove, rotate a token,
//! revoke, make an enrolment code and redeem one. Each is checked against the fleet as the batch's earlier changes
//! leave it, and becomes a record to store (or one to delete). Pure but for
//! the random source that makes tokens.

use std::collections::BTreeMap;

use crate::errors::{ChangeError, ErrorKind};
use crate::fleet::{
    DEFAULT_ROTATION_GRACE_SECS, EdgeRecord, EnrolmentRecord, Fleet, PreviousToken, new_token,
};

/// What a planned fleet change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeChange {
    Added,
    Rotated,
    Revoked,
    /// An enrolment code was made (the edge may be new, with no token).
    CodeMade,
    /// A code was redeemed: the edge has a fresh token.
    Enrolled,
}

/// A fleet change that passed planning.
#[derive(Debug, Clone)]
pub(crate) enum PlannedEdge {
    /// Store this record (it carries the new token, if any). `code` is a
    /// new enrolment code, to show once.
    Put { record: EdgeRecord, change: EdgeChange, code: Option<String> },
    /// Delete the record of this run-time edge.
    Remove { id: String },
}

impl PlannedEdge {
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Put { record, .. } => &record.id,
            Self::Remove { id } => id,
        }
    }

    /// The token to show the operator once the change is applied.
    pub(crate) fn new_token(&self) -> Option<&str> {
        match self {
            Self::Put {
                record,
                change: EdgeChange::Added | EdgeChange::Rotated | EdgeChange::Enrolled,
                ..
            } => Some(&record.token),
            _ => None,
        }
    }

    /// The enrolment code to show the operator once the change is applied.
    pub(crate) fn new_code(&self) -> Option<&str> {
        match self {
            Self::Put { code, .. } => code.as_deref(),
            Self::Remove { .. } => None,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Put { record, change: EdgeChange::Added, .. } => match &record.group {
                Some(g) => format!("add edge {} in group {g}, with a new token", record.id),
                None => format!("add edge {}, with a new token", record.id),
            },
            Self::Put { record, change: EdgeChange::Rotated, .. } => match &record.previous {
                Some(p) => format!(
                    "give edge {} a new token; the old one is accepted until unix ms {}",
                    record.id, p.until_unix_ms
                ),
                None => format!("give edge {} a new token; the old one is refused now", record.id),
            },
            Self::Put { record, change: EdgeChange::Revoked, .. } => {
                format!("revoke edge {}, closing its tunnels", record.id)
            }
            Self::Put { record, change: EdgeChange::CodeMade, .. } => {
                let until = record.enrolment.as_ref().map_or(0, |e| e.expires_unix_ms);
                if record.token.is_empty() && !record.revoked {
                    format!(
                        "make an enrolment code for edge {}, valid until unix ms {until} \
                         (the edge has no token until it is redeemed)",
                        record.id
                    )
                } else {
                    format!(
                        "make an enrolment code for edge {}, valid until unix ms {until}",
                        record.id
                    )
                }
            }
            Self::Put { record, change: EdgeChange::Enrolled, .. } => {
                format!("enrol edge {} with a fresh token (its code is used up)", record.id)
            }
            Self::Remove { id } => format!("remove edge {id}, closing its tunnels"),
        }
    }
}

fn conflict(message: String) -> ChangeError {
    ChangeError::new(ErrorKind::Conflict, message)
}

fn no_edge(id: &str, fleet: &Fleet) -> ChangeError {
    let edges: Vec<&String> = fleet.edges().map(|(id, _)| id).collect();
    ChangeError::new(ErrorKind::NotFound, format!("no edge with id {id:?} (edges: {edges:?})"))
}

fn token() -> Result<String, ChangeError> {
    new_token().map_err(|e| ChangeError::new(ErrorKind::Internal, e))
}

/// Plans adding edge `id`.
pub(crate) fn add(
    fleet: &mut Fleet,
    id: &str,
    group: Option<&str>,
) -> Result<PlannedEdge, ChangeError> {
    let invalid = |e: config::FieldError| ChangeError::new(ErrorKind::Invalid, e.to_string());
    config::check_id("id", id).map_err(invalid)?;
    if let Some(group) = group {
        config::check_id("group", group).map_err(invalid)?;
        if fleet.is_edge(group) || group == id {
            return Err(conflict(format!("group: {group:?} is an edge's id")));
        }
    }
    if fleet.is_edge(id) {
        return Err(conflict(format!("id: an edge named {id:?} already exists")));
    }
    if fleet.is_group(id) {
        return Err(conflict(format!("id: {id:?} is a group's id")));
    }
    let record = EdgeRecord {
        id: id.to_owned(),
        group: group.map(str::to_owned),
        token: token()?,
        previous: None,
        revoked: false,
        enrolment: None,
    };
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Added, code: None })
}

/// Plans removing run-time edge `id`; `mapping_targets` maps each mapping
/// that is not draining to the edge or group it names.
pub(crate) fn remove(
    fleet: &mut Fleet,
    id: &str,
    mapping_targets: &BTreeMap<String, String>,
) -> Result<PlannedEdge, ChangeError> {
    let edge = fleet.get(id).ok_or_else(|| no_edge(id, fleet))?;
    if edge.from_config {
        return Err(conflict(format!(
            "edge {id:?} is in the config file: remove it there and restart; to cut it off \
             now, revoke it"
        )));
    }
    let mut after = fleet.clone();
    after.remove(id);
    let stranded: Vec<&String> = mapping_targets
        .iter()
        .filter(|(_, target)| !after.knows(target))
        .map(|(name, _)| name)
        .collect();
    if !stranded.is_empty() {
        return Err(conflict(format!(
            "edge {id:?} is the only edge of mappings {stranded:?}: remove or drain them first"
        )));
    }
    *fleet = after;
    Ok(PlannedEdge::Remove { id: id.to_owned() })
}

/// Plans a new token for edge `id`, keeping the old one valid for
/// `grace_secs` (none on a revoked edge: its old token stays dead).
pub(crate) fn rotate(
    fleet: &mut Fleet,
    id: &str,
    grace_secs: Option<u64>,
    now_ms: u64,
) -> Result<PlannedEdge, ChangeError> {
    const MAX: u64 = api::MAX_ROTATION_GRACE_SECS;
    let grace = grace_secs.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
    if grace > MAX {
        return Err(ChangeError::new(
            ErrorKind::Invalid,
            format!("grace_secs: {grace} is out of range, expected 0..={MAX} (30 days)"),
        ));
    }
    let edge = fleet.get(id).ok_or_else(|| no_edge(id, fleet))?;
    let previous = match edge.current_token() {
        Some(old) if grace > 0 && !edge.revoked => {
            let old = String::from_utf8(old.to_vec()).map_err(|_| {
                ChangeError::new(
                    ErrorKind::Invalid,
                    format!(
                        "edge {id:?}: its current token is not text, so it cannot be kept for \
                         a grace; rotate with grace_secs 0"
                    ),
                )
            })?;
            Some(PreviousToken { token: old, until_unix_ms: now_ms.saturating_add(grace * 1000) })
        }
        _ => None,
    };
    let record = EdgeRecord {
        id: id.to_owned(),
        group: fleet.record(id).and_then(|r| r.group.clone()),
        token: token()?,
        previous,
        revoked: false,
        enrolment: fleet.record(id).and_then(|r| r.enrolment.clone()),
    };
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Rotated, code: None })
}

/// Plans revoking edge `id`: its record keeps no token.
pub(crate) fn revoke(fleet: &mut Fleet, id: &str) -> Result<PlannedEdge, ChangeError> {
    let edge = fleet.get(id).ok_or_else(|| no_edge(id, fleet))?;
    if edge.revoked {
        return Err(conflict(format!("edge {id:?} is already revoked")));
    }
    let record = EdgeRecord {
        id: id.to_owned(),
        group: fleet.record(id).and_then(|r| r.group.clone()),
        token: String::new(),
        previous: None,
        revoked: true,
        // A code made before the revocation must not let the edge back.
        enrolment: None,
    };
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Revoked, code: None })
}

/// Plans an enrolment code for edge `id`, creating the edge (in `group`,
/// with no token until the code is redeemed) when it does not exist. A
/// newer code replaces the edge's earlier one. The code carries `pin`, the
/// cloud's TLS key, when it has one.
pub(crate) fn enroll(
    fleet: &mut Fleet,
    id: &str,
    group: Option<&str>,
    ttl_secs: Option<u64>,
    now_ms: u64,
    pin: Option<[u8; 32]>,
) -> Result<PlannedEdge, ChangeError> {
    const MAX: u64 = api::MAX_ENROL_TTL_SECS;
    let ttl = ttl_secs.unwrap_or(api::DEFAULT_ENROL_TTL_SECS);
    if !(1..=MAX).contains(&ttl) {
        return Err(ChangeError::new(
            ErrorKind::Invalid,
            format!("ttl_secs: {ttl} is out of range, expected 1..={MAX} (7 days)"),
        ));
    }
    let mut record = match fleet.get(id) {
        Some(edge) => {
            let current = fleet.record(id).and_then(|r| r.group.clone());
            if let Some(group) = group.filter(|g| current.as_deref() != Some(*g)) {
                return Err(conflict(format!(
                    "edge {id:?} exists{}: an enrolment code does not move it to group \
                     {group:?}; leave out the group",
                    current.map(|g| format!(" in group {g:?}")).unwrap_or_default()
                )));
            }
            match fleet.record(id) {
                Some(record) => record.clone(),
                // A config-file edge keeps its token until the code is
                // redeemed: its running agent is not cut off meanwhile.
                None => EdgeRecord {
                    id: id.to_owned(),
                    group: None,
                    token: edge
                        .current_token()
                        .and_then(|t| String::from_utf8(t.to_vec()).ok())
                        .ok_or_else(|| {
                            ChangeError::new(
                                ErrorKind::Invalid,
                                format!(
                                    "edge {id:?}: its config-file token is not text, so the \
                                     cloud cannot keep it until the code is redeemed"
                                ),
                            )
                        })?,
                    previous: None,
                    revoked: false,
                    enrolment: None,
                },
            }
        }
        None => {
            let PlannedEdge::Put { mut record, .. } = add(&mut fleet.clone(), id, group)? else {
                unreachable!("adding plans a put")
            };
            record.token = String::new();
            record
        }
    };
    let mut secret = [0u8; proto::ENROL_SECRET_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(
        |_| ChangeError::new(ErrorKind::Internal, "the system random source failed".into()),
    )?;
    record.enrolment = Some(EnrolmentRecord {
        secret_sha256: proto::secret_digest(&secret),
        expires_unix_ms: now_ms.saturating_add(ttl * 1000),
        redeemed_unix_ms: None,
        redeemed_by: None,
    });
    fleet.put(record.clone());
    let code = proto::EnrolmentCode { secret, pin }.encode();
    Ok(PlannedEdge::Put { record, change: EdgeChange::CodeMade, code: Some(code) })
}

/// Why a code cannot be redeemed; each is its own refusal on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unredeemable {
    Unknown,
    Expired,
    Used,
}

impl Unredeemable {
    pub(crate) fn refuse_code(self) -> proto::RefuseCode {
        match self {
            Self::Unknown => proto::RefuseCode::UnknownCode,
            Self::Expired => proto::RefuseCode::CodeExpired,
            Self::Used => proto::RefuseCode::CodeUsed,
        }
    }

    pub(crate) fn sentence(self) -> &'static str {
        match self {
            Self::Unknown => {
                "unknown enrolment code: never made here, or replaced by a newer code for its \
                 edge (relayctl edges enroll makes one)"
            }
            Self::Expired => "this enrolment code expired: make a new one (relayctl edges enroll)",
            Self::Used => {
                "this enrolment code was used already; each works once: make a new one \
                 (relayctl edges enroll)"
            }
        }
    }
}

/// The edge a code with this secret digest is for, if it can be redeemed.
pub(crate) fn redeemable<'a>(
    fleet: &'a Fleet,
    secret_sha256: &str,
    now_ms: u64,
) -> Result<&'a EdgeRecord, Unredeemable> {
    let record = fleet.by_enrolment(secret_sha256).ok_or(Unredeemable::Unknown)?;
    let enrolment = record.enrolment.as_ref().ok_or(Unredeemable::Unknown)?;
    if enrolment.redeemed_unix_ms.is_some() {
        return Err(Unredeemable::Used);
    }
    if now_ms >= enrolment.expires_unix_ms {
        return Err(Unredeemable::Expired);
    }
    Ok(record)
}

/// Plans redeeming the code with this secret digest: the edge gets a fresh
/// token (its old one, and any revocation, end), the code is used up.
pub(crate) fn redeem(
    fleet: &mut Fleet,
    secret_sha256: &str,
    hostname: &str,
    now_ms: u64,
) -> Result<PlannedEdge, ChangeError> {
    let mut record = redeemable(fleet, secret_sha256, now_ms)
        .map_err(|why| {
            let kind = match why {
                Unredeemable::Unknown => ErrorKind::NotFound,
                Unredeemable::Expired | Unredeemable::Used => ErrorKind::Conflict,
            };
            ChangeError::new(kind, why.sentence().into())
        })?
        .clone();
    record.token = token()?;
    record.previous = None;
    record.revoked = false;
    if let Some(enrolment) = &mut record.enrolment {
        enrolment.redeemed_unix_ms = Some(now_ms);
        enrolment.redeemed_by = Some(hostname.chars().take(64).collect());
    }
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Enrolled, code: None })
}

#[cfg(test)]
mod tests {
    use config::{EdgeEntry, Secret};

    use super::*;

    fn fleet() -> Fleet {
        let base =
            [EdgeEntry { id: "site-a".into(), token: Secret::new(b"config-token".to_vec()) }];
        Fleet::new(&base, &[], [], &mut Vec::new())
    }

    fn kind(r: Result<PlannedEdge, ChangeError>) -> ErrorKind {
        r.expect_err("refused").kind
    }

    #[test]
    fn adding_checks_the_id_and_the_group_and_makes_a_token() {
        let mut f = fleet();
        assert_eq!(kind(add(&mut f, "site-a", None)), ErrorKind::Conflict);
        assert_eq!(kind(add(&mut f, "bad id", None)), ErrorKind::Invalid);
        assert_eq!(kind(add(&mut f, "b", Some("site-a"))), ErrorKind::Conflict);
        let planned = add(&mut f, "b", Some("pool")).unwrap();
        assert_eq!(planned.new_token().map(str::len), Some(64));
        assert_eq!(f.members("pool"), ["b"]);
        assert_eq!(kind(add(&mut f, "pool", None)), ErrorKind::Conflict, "a group's id");
    }

    #[test]
    fn removing_refuses_config_edges_and_edges_that_strand_a_mapping() {
        let mut f = fleet();
        let targets = BTreeMap::from([("web".to_owned(), "pool".to_owned())]);
        assert_eq!(kind(remove(&mut f, "site-a", &targets)), ErrorKind::Conflict);
        assert_eq!(kind(remove(&mut f, "nobody", &targets)), ErrorKind::NotFound);
        add(&mut f, "b", Some("pool")).unwrap();
        add(&mut f, "c", Some("pool")).unwrap();
        remove(&mut f, "b", &targets).unwrap();
        let err = remove(&mut f, "c", &targets).unwrap_err();
        assert!(err.message.contains("web"), "{err}");
        assert!(f.is_edge("c"), "a refused change leaves the fleet as it was");
    }

    #[test]
    fn rotating_keeps_the_old_token_for_the_grace_unless_the_edge_was_revoked() {
        let mut f = fleet();
        let PlannedEdge::Put { record, .. } = rotate(&mut f, "site-a", Some(60), 1_000).unwrap()
        else {
            panic!("a put")
        };
        let previous = record.previous.expect("kept");
        assert_eq!((previous.token.as_str(), previous.until_unix_ms), ("config-token", 61_000));
        assert_eq!(
            kind(rotate(&mut f, "site-a", Some(api::MAX_ROTATION_GRACE_SECS + 1), 0)),
            ErrorKind::Invalid
        );
        revoke(&mut f, "site-a").unwrap();
        assert_eq!(kind(revoke(&mut f, "site-a")), ErrorKind::Conflict);
        let PlannedEdge::Put { record, .. } = rotate(&mut f, "site-a", None, 0).unwrap() else {
            panic!("a put")
        };
        assert!(record.previous.is_none() && !record.revoked, "a fresh start, old token dead");
    }

    fn code_digest(planned: &PlannedEdge) -> String {
        let code = proto::EnrolmentCode::parse(planned.new_code().expect("a code")).unwrap();
        proto::secret_digest(&code.secret)
    }

    #[test]
    fn a_code_creates_a_tokenless_edge_and_works_once_within_its_lifetime() {
        let mut f = fleet();
        assert_eq!(kind(enroll(&mut f, "b", None, Some(0), 0, None)), ErrorKind::Invalid);
        assert_eq!(
            kind(enroll(&mut f, "b", None, Some(api::MAX_ENROL_TTL_SECS + 1), 0, None)),
            ErrorKind::Invalid
        );
        let planned = enroll(&mut f, "b", Some("pool"), Some(60), 1_000, None).unwrap();
        let digest = code_digest(&planned);
        assert!(f.get("b").is_some_and(|e| e.tokens(0).is_empty()), "no token until redeemed");
        assert_eq!(f.members("pool"), ["b"]);
        assert_eq!(redeemable(&f, "00", 1_000).unwrap_err(), Unredeemable::Unknown);
        assert_eq!(redeemable(&f, &digest, 61_000).unwrap_err(), Unredeemable::Expired);
        let mut later = f.clone();
        let redeemed = redeem(&mut later, &digest, "gw-1", 60_999).unwrap();
        let token = redeemed.new_token().expect("a fresh token").to_owned();
        assert_eq!(token.len(), 64);
        assert_eq!(later.get("b").unwrap().current_token(), Some(token.as_bytes()));
        assert_eq!(redeemable(&later, &digest, 61_000).unwrap_err(), Unredeemable::Used);
        assert_eq!(kind(redeem(&mut later, &digest, "gw-2", 61_000)), ErrorKind::Conflict);
        // A newer code replaces the older one.
        let newer = enroll(&mut later, "b", None, None, 70_000, None).unwrap();
        assert_eq!(redeemable(&later, &digest, 70_000).unwrap_err(), Unredeemable::Unknown);
        assert!(redeemable(&later, &code_digest(&newer), 70_000).is_ok());
        assert!(later.get("b").unwrap().current_token().is_some(), "kept until redeemed");
    }

    #[test]
    fn a_config_edge_keeps_its_token_until_redeemed_and_a_revocation_voids_its_code() {
        let mut f = fleet();
        assert_eq!(
            kind(enroll(&mut f, "site-a", Some("pool"), None, 0, None)),
            ErrorKind::Conflict
        );
        let planned = enroll(&mut f, "site-a", None, None, 0, None).unwrap();
        assert_eq!(f.get("site-a").unwrap().current_token(), Some(&b"config-token"[..]));
        let digest = code_digest(&planned);
        revoke(&mut f, "site-a").unwrap();
        assert_eq!(redeemable(&f, &digest, 1).unwrap_err(), Unredeemable::Unknown);
        // A code made after the revocation brings it back once redeemed.
        let planned = enroll(&mut f, "site-a", None, None, 0, None).unwrap();
        assert!(f.get("site-a").unwrap().revoked, "revoked until redeemed");
        redeem(&mut f, &code_digest(&planned), "gw", 1).unwrap();
        let edge = f.get("site-a").unwrap();
        assert!(!edge.revoked && edge.tokens(1).len() == 1);
    }
}
