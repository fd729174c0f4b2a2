//! Events for changes another node made: each change is one etcd
//! transaction that also writes the guard key with the committing node's
//! id, so a node that sees a transaction of another node's in its watch
//! records what it changed ("added through node a"), and every node's
//! event log tells the cluster's changes, not only those made through it.
//! The node that made a change recorded it already, with its interface.
//! Pure: what to record, from the state before the watch's events.

use api::EventKind;

use super::etcd::Event;
use super::state::{Desired, Key, Keys, StoredMapping};
use crate::fleet::EdgeRecord;

/// One event to record: kind, subject, text.
pub(super) type Remote = (EventKind, String, String);

/// What the watch's `events` changed, for the transactions committed by
/// another node than `this_node`, described against `before`.
pub(super) fn describe(
    keys: &Keys,
    before: &Desired,
    events: &[Event],
    this_node: &str,
) -> Vec<Remote> {
    // The committer of each revision, from its guard write.
    let committers: std::collections::HashMap<i64, String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Put(kv) if matches!(keys.classify(&kv.key), Key::Guard) => {
                Some((kv.mod_revision, String::from_utf8_lossy(&kv.value).into_owned()))
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for event in events {
        let (key, revision) = match event {
            Event::Put(kv) => (kv.key.as_str(), kv.mod_revision),
            Event::Delete { key, revision } => (key.as_str(), *revision),
        };
        let Some(node) = committers.get(&revision).filter(|n| *n != this_node) else { continue };
        let node = tunnel::untrusted::escape(node).into_owned();
        let value = match event {
            Event::Put(kv) => Some(kv.value.as_slice()),
            Event::Delete { .. } => None,
        };
        match keys.classify(key) {
            Key::Mapping(name) => mapping(&mut out, before, name, value, &node),
            Key::DrainedEdge(id) => out.push(match value {
                Some(_) => {
                    (EventKind::EdgeDrained, id.to_owned(), format!("drained through node {node}"))
                }
                None => (
                    EventKind::EdgeUndrained,
                    id.to_owned(),
                    format!("undrained through node {node}"),
                ),
            }),
            Key::Edge(id) => edge(&mut out, before, id, value, &node),
            Key::Guard | Key::NodeDrain(_) | Key::Node(_) | Key::Other => {}
        }
    }
    out
}

fn mapping(out: &mut Vec<Remote>, before: &Desired, name: &str, value: Option<&[u8]>, node: &str) {
    let old = before.mappings.get(name).map(|(m, _)| m);
    let Some(value) = value else {
        // A key deleted after its drain is housekeeping, not a change.
        if old.is_some_and(|m| m.drain_until_unix_ms.is_none()) {
            out.push((
                EventKind::MappingRemoved,
                name.to_owned(),
                format!("removed through node {node}"),
            ));
        }
        return;
    };
    let Ok(new) = serde_json::from_slice::<StoredMapping>(value) else { return };
    let spec = &new.spec;
    let text = match (old, new.drain_until_unix_ms) {
        (Some(o), Some(_)) if o.drain_until_unix_ms.is_none() => {
            out.push((
                EventKind::MappingDrained,
                name.to_owned(),
                format!("draining through node {node}"),
            ));
            return;
        }
        (None, _) => format!(
            "added through node {node}: {} to edge {}, target {}",
            spec.listen, spec.edge, spec.target
        ),
        (Some(o), _) if o.spec != new.spec => {
            format!(
                "replaced through node {node}: {} to edge {}, target {}",
                spec.listen, spec.edge, spec.target
            )
        }
        (Some(_), _) => return,
    };
    out.push((EventKind::MappingAdded, name.to_owned(), text));
}

fn edge(out: &mut Vec<Remote>, before: &Desired, id: &str, value: Option<&[u8]>, node: &str) {
    let old = before.edges.get(id).map(|(r, _)| r);
    let Some(value) = value else {
        if old.is_some() {
            out.push((
                EventKind::EdgeRemoved,
                id.to_owned(),
                format!("removed through node {node}"),
            ));
        }
        return;
    };
    let Ok(new) = serde_json::from_slice::<EdgeRecord>(value) else { return };
    let (kind, text) = match old {
        None => (EventKind::EdgeAdded, format!("added through node {node}")),
        Some(o) if new.revoked && !o.revoked => {
            (EventKind::EdgeRevoked, format!("revoked through node {node}"))
        }
        Some(o) if new.enrolment != o.enrolment => {
            // Made here or redeemed: the node that took it recorded which.
            let redeemed = new.enrolment.as_ref().is_some_and(|e| e.redeemed_unix_ms.is_some());
            if redeemed {
                (EventKind::EdgeEnrolled, format!("enrolled through node {node}"))
            } else {
                (EventKind::EnrolmentCodeMade, format!("enrolment code made through node {node}"))
            }
        }
        Some(o) if new.token != o.token => {
            (EventKind::TokenRotated, format!("new token through node {node}"))
        }
        Some(_) => return,
    };
    out.push((kind, id.to_owned(), text));
}

#[cfg(test)]
mod tests {
    use super::super::etcd::Kv;
    use super::*;

    fn put(key: &str, value: &str, revision: i64) -> Event {
        Event::Put(Kv {
            key: format!("/relay/{key}"),
            value: value.as_bytes().to_vec(),
            mod_revision: revision,
        })
    }

    fn mapping_json(name: &str, drain: Option<u64>) -> String {
        let drain = drain.map_or(String::new(), |d| format!(",\"drain_until_unix_ms\":{d}"));
        format!(
            "{{\"spec\":{{\"name\":\"{name}\",\"listen\":\"0.0.0.0:8080\",\"edge\":\"e1\",\"target\":\"10.0.0.5:80\"}}{drain}}}"
        )
    }

    #[test]
    fn another_nodes_changes_are_described_and_this_nodes_are_not() {
        let keys = Keys::new("/relay/");
        let mut before = Desired::default();
        let events = [put("changes", "a", 7), put("mappings/web", &mapping_json("web", None), 7)];
        let seen = describe(&keys, &before, &events, "b");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, EventKind::MappingAdded);
        assert_eq!(seen[0].2, "added through node a: 0.0.0.0:8080 to edge e1, target 10.0.0.5:80");
        assert!(describe(&keys, &before, &events, "a").is_empty(), "a recorded its own");

        let stored: StoredMapping = serde_json::from_str(&mapping_json("web", None)).unwrap();
        before.mappings.insert("web".into(), (stored, 7));
        let drain =
            [put("changes", "a", 8), put("mappings/web", &mapping_json("web", Some(99)), 8)];
        let seen = describe(&keys, &before, &drain, "b");
        assert_eq!(
            (seen[0].0, seen[0].2.as_str()),
            (EventKind::MappingDrained, "draining through node a")
        );
        let removed = [
            put("changes", "c", 9),
            Event::Delete { key: "/relay/mappings/web".into(), revision: 9 },
        ];
        assert_eq!(describe(&keys, &before, &removed, "b")[0].0, EventKind::MappingRemoved);
        // A delete without a guard write (housekeeping after a drain) is no change.
        let swept = [Event::Delete { key: "/relay/mappings/web".into(), revision: 10 }];
        assert!(describe(&keys, &before, &swept, "b").is_empty());
        let drained = [put("changes", "a", 11), put("drained-edges/e1", "{}", 11)];
        assert_eq!(describe(&keys, &before, &drained, "b")[0].0, EventKind::EdgeDrained);
    }
}
