//! Planning the fleet's changes of a batch: add, remove, rotate a token,
//! revoke. Each is checked against the fleet as the batch's earlier changes
//! leave it, and becomes a record to store (or one to delete). Pure but for
//! the random source that makes tokens.

use std::collections::BTreeMap;

use crate::errors::{ChangeError, ErrorKind};
use crate::fleet::{DEFAULT_ROTATION_GRACE_SECS, EdgeRecord, Fleet, PreviousToken, new_token};

/// What a planned fleet change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeChange {
    Added,
    Rotated,
    Revoked,
}

/// A fleet change that passed planning.
#[derive(Debug, Clone)]
pub(crate) enum PlannedEdge {
    /// Store this record (it carries the new token, if any).
    Put { record: EdgeRecord, change: EdgeChange },
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
            Self::Put { record, change: EdgeChange::Added | EdgeChange::Rotated } => {
                Some(&record.token)
            }
            _ => None,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Put { record, change: EdgeChange::Added } => match &record.group {
                Some(g) => format!("add edge {} in group {g}, with a new token", record.id),
                None => format!("add edge {}, with a new token", record.id),
            },
            Self::Put { record, change: EdgeChange::Rotated } => match &record.previous {
                Some(p) => format!(
                    "give edge {} a new token; the old one is accepted until unix ms {}",
                    record.id, p.until_unix_ms
                ),
                None => format!("give edge {} a new token; the old one is refused now", record.id),
            },
            Self::Put { record, change: EdgeChange::Revoked } => {
                format!("revoke edge {}, closing its tunnels", record.id)
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
    };
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Added })
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
    };
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Rotated })
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
    };
    fleet.put(record.clone());
    Ok(PlannedEdge::Put { record, change: EdgeChange::Revoked })
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
}
