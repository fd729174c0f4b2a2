//! The state file: mapping changes made at run time, so they survive a
//! restart.
//!
//! Config-file mappings are the baseline. The state file records what the
//! API changed on top of it: mappings added at run time, the names of
//! config-file mappings that were drained or removed, the edges an
//! operator drained, and the fleet's run-time records (edges added, given a
//! new token or revoked: they hold tokens, hence the file's mode). On start
//! the agent serves `config - removed + added`, with those edges drained,
//! and admits the config's edges with the records on top.
//!
//! Writes are atomic: a temporary file in the same directory (created
//! exclusively, mode 0600), fsync, rename over the old file, fsync of the
//! directory. A crash at any moment leaves the old state or the new one,
//! never a torn or empty file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use api::MappingSpec;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::fleet::EdgeRecord;

/// Format version of the state file.
const STATE_VERSION: u32 = 1;

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersistedState {
    version: u32,
    /// Mappings added through the API, in the order they were added.
    pub(crate) added: Vec<MappingSpec>,
    /// Names of config-file mappings drained or removed through the API.
    pub(crate) removed: Vec<String>,
    /// Edges an operator drained (no new streams go to them), by id.
    /// Absent when empty, so files without drained edges stay readable by
    /// agents that predate the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) drained_edges: Vec<String>,
    /// Edges added, given a new token or revoked at run time, by id. Absent
    /// when empty, like `drained_edges`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) edges: Vec<EdgeRecord>,
}

impl PersistedState {
    pub(crate) fn new() -> Self {
        Self { version: STATE_VERSION, ..Self::default() }
    }

    /// Records an added mapping.
    pub(crate) fn add(&mut self, spec: MappingSpec) {
        self.removed.retain(|n| *n != spec.name);
        self.added.retain(|m| m.name != spec.name);
        self.added.push(spec);
    }

    /// Replaces the policy of run-time mapping `name` (planning checked
    /// that it is one).
    pub(crate) fn set_policy(&mut self, name: &str, policy: &config::TrafficPolicy) {
        let api::PolicySpec {
            max_connections_per_client,
            new_connections_per_client,
            rate_limit_in_bps,
            rate_limit_out_bps,
        } = api::PolicySpec::of(policy);
        if let Some(spec) = self.added.iter_mut().find(|m| m.name == name) {
            spec.max_connections_per_client = max_connections_per_client;
            spec.new_connections_per_client = new_connections_per_client;
            spec.rate_limit_in_bps = rate_limit_in_bps;
            spec.rate_limit_out_bps = rate_limit_out_bps;
        }
    }

    /// Records whether an operator drained edge `id`.
    pub(crate) fn set_edge_drained(&mut self, id: &str, drained: bool) {
        self.drained_edges.retain(|e| e != id);
        if drained {
            self.drained_edges.push(id.to_owned());
        }
    }

    /// Records an edge's run-time record, replacing the one before.
    pub(crate) fn put_edge(&mut self, record: EdgeRecord) {
        match self.edges.iter_mut().find(|r| r.id == record.id) {
            Some(old) => *old = record,
            None => self.edges.push(record),
        }
    }

    /// Forgets a run-time edge (and that it was drained).
    pub(crate) fn remove_edge(&mut self, id: &str) {
        self.edges.retain(|r| r.id != id);
        self.drained_edges.retain(|e| e != id);
    }

    /// Records that `name` is gone (drained or removed).
    pub(crate) fn forget(&mut self, name: &str, from_config: bool) {
        self.added.retain(|m| m.name != name);
        if from_config && !self.removed.iter().any(|n| n == name) {
            self.removed.push(name.to_owned());
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {reason}")]
pub(crate) struct StoreError {
    path: String,
    reason: String,
}

/// The state file on disk.
#[derive(Debug)]
pub(crate) struct Store {
    path: PathBuf,
    /// Makes the rename durable; tests put a failing one here.
    sync_dir: fn(&Path) -> std::io::Result<()>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, sync_dir }
    }

    /// A store whose directory sync always fails (after the rename).
    #[cfg(test)]
    pub(crate) fn with_failing_dir_sync(path: PathBuf) -> Self {
        Self { path, sync_dir: |_| Err(std::io::Error::other("injected: directory fsync failed")) }
    }

    fn error(&self, reason: impl ToString) -> StoreError {
        StoreError { path: self.path.display().to_string(), reason: reason.to_string() }
    }

    /// Reads the state; a missing file is an empty state.
    pub(crate) fn load(&self) -> Result<PersistedState, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PersistedState::new()),
            Err(e) => return Err(self.error(e)),
        };
        let state: PersistedState = serde_json::from_str(&text).map_err(|e| self.error(e))?;
        if state.version != STATE_VERSION {
            return Err(self.error(format!(
                "format version {} is not supported (expected {STATE_VERSION})",
                state.version
            )));
        }
        Ok(state)
    }

    /// Replaces the state atomically: a temporary file created afresh
    /// (never through a symlink planted at its name), readable by the
    /// agent's user only, fsynced, renamed over the old file, then the
    /// directory fsynced.
    ///
    /// # Errors
    /// [`StoreError`] when the old state is still the one on disk: nothing
    /// changed. Once the rename is done the new state is what a reader and
    /// a restart see, so a failing directory sync after it is not an error
    /// but [`Saved::NotSynced`].
    pub(crate) fn save(&self, state: &PersistedState) -> Result<Saved, StoreError> {
        let mut json = serde_json::to_vec_pretty(state).map_err(|e| self.error(e))?;
        json.push(b'\n');
        self.save_bytes(&json)
    }

    /// Replaces the file's contents with `json` as [`save`](Self::save)
    /// does.
    ///
    /// # Errors
    /// As for [`save`](Self::save).
    pub(crate) fn save_bytes(&self, json: &[u8]) -> Result<Saved, StoreError> {
        let dir =
            self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            self.path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
        ));
        // Left by a crash mid-save, or planted: either way not ours to
        // follow. Removing a symlink removes the link, not its target.
        match fs::remove_file(&tmp) {
            Ok(()) => warn!(path = %tmp.display(), "removed a stale temporary state file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.error(format!("{}: {e}", tmp.display()))),
        }
        let write = || -> std::io::Result<()> {
            let mut file = private_new_file(&tmp)?;
            file.write_all(json)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(e));
        }
        Ok(match (self.sync_dir)(dir) {
            Ok(()) => Saved::Durable,
            Err(e) => Saved::NotSynced(self.error(format!("directory fsync after rename: {e}"))),
        })
    }
}

/// How far a successful [`Store::save`] got.
#[derive(Debug)]
#[must_use]
pub(crate) enum Saved {
    /// The new state is on disk and will survive a power loss.
    Durable,
    /// The new state replaced the old one, but the directory could not be
    /// synced: a power loss (not a crash) may bring the old file back.
    NotSynced(StoreError),
}

/// Creates `path`, failing if anything (a file, a symlink) is there, with
/// mode 0600 whatever the umask.
fn private_new_file(path: &Path) -> std::io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> MappingSpec {
        MappingSpec {
            name: name.into(),
            listen: "127.0.0.1:0".into(),
            edge: "e1".into(),
            target: "127.0.0.1:22".into(),
            ..MappingSpec::default()
        }
    }

    #[test]
    fn a_new_policy_replaces_the_run_time_mappings_and_touches_nothing_else() {
        let mut state = PersistedState::new();
        state.add(spec("a"));
        state.add(spec("b"));
        let policy = config::TrafficPolicy {
            max_connections_per_client: Some(3),
            rate_limit_out: Some(1 << 20),
            ..Default::default()
        };
        state.set_policy("a", &policy);
        let a = state.added.iter().find(|m| m.name == "a").unwrap();
        assert_eq!(a.max_connections_per_client, Some(3));
        assert_eq!(a.rate_limit_out_bps, Some(1 << 20));
        assert_eq!(a.to_config().unwrap().policy, policy);
        assert_eq!(state.added.iter().find(|m| m.name == "b").unwrap(), &spec("b"));
        state.set_policy("a", &config::TrafficPolicy::default());
        assert_eq!(state.added.iter().find(|m| m.name == "a").unwrap(), &spec("a"));
    }

    #[test]
    fn save_then_load_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        assert_eq!(store.load().unwrap(), PersistedState::new());
        let mut state = PersistedState::new();
        state.add(spec("a"));
        state.forget("cfg", true);
        assert!(matches!(store.save(&state), Ok(Saved::Durable)));
        assert_eq!(store.load().unwrap(), state);
        // No temporary file is left behind.
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn forgetting_a_runtime_mapping_drops_it_and_a_config_one_is_remembered() {
        let mut state = PersistedState::new();
        state.add(spec("a"));
        state.forget("a", false);
        assert!(state.added.is_empty() && state.removed.is_empty());
        state.forget("cfg", true);
        state.forget("cfg", true);
        assert_eq!(state.removed, vec!["cfg".to_owned()]);
        // Adding a name again undoes its removal.
        state.add(spec("cfg"));
        assert!(state.removed.is_empty());
    }

    #[test]
    fn a_planted_symlink_at_the_temporary_name_is_not_followed_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, dir.path().join(".state.json.tmp")).unwrap();
        let store = Store::new(path.clone());
        let mut state = PersistedState::new();
        state.add(spec("a"));
        assert!(matches!(store.save(&state), Ok(Saved::Durable)));
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious", "wrote through the symlink");
        assert!(!fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(store.load().unwrap(), state);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state file mode {mode:o}");
        // A temporary file left by a crash does not block the next save.
        fs::write(dir.path().join(".state.json.tmp"), "torn").unwrap();
        state.add(spec("b"));
        assert!(
            matches!(store.save(&state), Ok(Saved::Durable)),
            "saved over a stale temporary file"
        );
        assert_eq!(store.load().unwrap(), state);
    }

    #[test]
    fn drained_edges_round_trip_and_a_file_without_them_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, r#"{"version":1,"added":[],"removed":["cfg"]}"#).unwrap();
        let store = Store::new(path.clone());
        let mut state = store.load().unwrap();
        assert!(state.drained_edges.is_empty());
        state.set_edge_drained("e1", true);
        state.set_edge_drained("e1", true);
        state.set_edge_drained("e2", true);
        state.set_edge_drained("e2", false);
        assert_eq!(state.drained_edges, vec!["e1".to_owned()]);
        assert!(matches!(store.save(&state), Ok(Saved::Durable)));
        assert_eq!(store.load().unwrap(), state);
        state.set_edge_drained("e1", false);
        assert!(matches!(store.save(&state), Ok(Saved::Durable)));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("drained_edges"), "written only when not empty: {text}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{ not json").unwrap();
        assert!(Store::new(path).load().is_err());
    }
}
