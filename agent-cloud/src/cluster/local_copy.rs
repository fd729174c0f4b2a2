//! The local copy of the last state a node applied: written (atomically,
//! like the state file) after every change it applies, read at start when
//! etcd does not answer, so that a node restarted during an etcd outage
//! serves what it served before ("fail static").

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Desired;
use crate::store::{Saved, Store};

/// Format version of the local copy.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    version: u32,
    state: Desired,
}

/// Writes `state`. A failed directory sync is not an error here: the copy
/// is a fallback, and the next change writes it again.
///
/// # Errors
/// When the file cannot be written.
pub(super) fn save(path: &Path, state: &Desired) -> Result<(), String> {
    let copy = Copy { version: VERSION, state: state.clone() };
    let json = serde_json::to_vec(&copy).map_err(|e| e.to_string())?;
    match Store::new(path.to_owned()).save_bytes(&json) {
        Ok(Saved::Durable | Saved::NotSynced(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the copy; `None` when there is none.
///
/// # Errors
/// When it exists but cannot be read or parsed.
pub(super) fn load(path: &Path) -> Result<Option<Desired>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let copy: Copy =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if copy.version != VERSION {
        return Err(format!(
            "{}: format version {} is not supported",
            path.display(),
            copy.version
        ));
    }
    Ok(Some(copy.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_copy_loads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.json");
        assert_eq!(load(&path).unwrap(), None);
        let mut state = Desired { revision: 12, guard_mod: 11, ..Desired::default() };
        state.drained_edges.insert("e2".into());
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        std::fs::write(&path, "{").unwrap();
        assert!(load(&path).is_err());
    }
}
