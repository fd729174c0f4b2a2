//! Loads every `tests/fixtures/{cloud,edge}/{valid,invalid}/*.toml`.
//!
//! Valid fixtures must load. Each invalid fixture starts with a line
//! `# expect: <fragment>`; loading it must fail with a message that contains
//! the file name and that fragment (which includes the line number).

use std::path::{Path, PathBuf};

use config::{CloudConfig, ConfigError, EdgeConfig};

mod common;

type Loader = fn(&Path) -> Result<(), ConfigError>;

fn load_cloud(path: &Path) -> Result<(), ConfigError> {
    CloudConfig::load(path).map(drop)
}

fn load_edge(path: &Path) -> Result<(), ConfigError> {
    EdgeConfig::load(path).map(drop)
}

/// The `*.toml` files of `fixtures/<kind>/<group>`, sorted.
fn fixtures(kind: &str, group: &str) -> Vec<PathBuf> {
    let dir = common::fixtures_dir().join(kind).join(group);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Checks all fixtures of `kind` and returns (valid, invalid) counts.
fn check(kind: &str, load: Loader) -> (usize, usize) {
    let mut failures = Vec::new();
    let valid = fixtures(kind, "valid");
    for path in &valid {
        if let Err(e) = load(path) {
            failures.push(format!("{}: expected to load, got: {e}", path.display()));
        }
    }
    let invalid = fixtures(kind, "invalid");
    for path in &invalid {
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let Some(fragment) = first.strip_prefix("# expect: ").map(str::trim) else {
            failures.push(format!("{}: first line must be `# expect: <fragment>`", path.display()));
            continue;
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        match load(path) {
            Ok(()) => failures
                .push(format!("{}: expected an error containing {fragment:?}", path.display())),
            Err(e) => {
                let shown = e.to_string();
                if !shown.contains(name) || !shown.contains(fragment) {
                    failures.push(format!(
                        "{}: error does not contain the file name and {fragment:?}:\n    {shown}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} fixture failure(s):\n{}", failures.len(), failures.join("\n"));
    (valid.len(), invalid.len())
}

#[test]
fn cloud_fixtures() {
    let (valid, invalid) = check("cloud", load_cloud);
    assert!(valid >= 10, "found only {valid} valid cloud fixtures");
    assert!(invalid >= 72, "found only {invalid} invalid cloud fixtures");
}

#[test]
fn edge_fixtures() {
    let (valid, invalid) = check("edge", load_edge);
    assert!(valid >= 4, "found only {valid} valid edge fixtures");
    assert!(invalid >= 25, "found only {invalid} invalid edge fixtures");
}
