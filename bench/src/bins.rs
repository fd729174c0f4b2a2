//! Finding the agent binaries: next to our own executable (the same
//! `target/<profile>` directory), or in `--bin-dir`.
//!
//! The bench builds nothing itself. It warns when a binary is older than
//! the sources it is built from, so a stale build is not measured by
//! mistake.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

/// The workspace crates the agent binaries are built from.
const AGENT_SOURCES: &[&str] = &["proto", "config", "tunnel", "agent-cloud", "agent-edge"];

#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) cloud: PathBuf,
    pub(crate) edge: PathBuf,
    /// relayctl, for the console's figures, when it was built.
    pub(crate) console: Option<PathBuf>,
    /// This executable (run again with `--serve-targets`).
    pub(crate) bench: PathBuf,
}

pub(crate) fn find(dir: Option<&Path>) -> Result<Bins> {
    let bench = std::env::current_exe().context("cannot locate the relay-bench executable")?;
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => bench.parent().context("relay-bench has no parent directory")?.to_path_buf(),
    };
    let find = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if !path.is_file() {
            bail!(
                "{name} not found in {}: build the agents first, e.g.\n  \
                 cargo build --release -p agent-cloud -p agent-edge\n\
                 (or pass --bin-dir DIR where relay-cloud and relay-edge are)",
                dir.display()
            );
        }
        Ok(path)
    };
    let console = Some(dir.join("relayctl")).filter(|p| p.is_file());
    Ok(Bins { cloud: find("relay-cloud")?, edge: find("relay-edge")?, console, bench })
}

/// Warnings for binaries older than the newest source file of the agents,
/// when the sources are where this crate was built from.
pub(crate) fn staleness(bins: &Bins) -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for krate in AGENT_SOURCES {
        newest_file(&workspace.join(krate), 0, &mut newest);
    }
    let Some((source_time, source)) = newest else { return Vec::new() };
    let mut warnings = Vec::new();
    for bin in [&bins.cloud, &bins.edge] {
        let built = std::fs::metadata(bin).and_then(|m| m.modified());
        if matches!(built, Ok(t) if t < source_time) {
            warnings.push(format!(
                "{} is older than {}: rebuild it (cargo build --release -p agent-cloud -p agent-edge)",
                bin.display(),
                source.display()
            ));
        }
    }
    warnings
}

fn newest_file(dir: &Path, depth: usize, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let name = entry.file_name();
            if depth < 6 && name != "target" && name != "tests" {
                newest_file(&path, depth + 1, newest);
            }
            continue;
        }
        let relevant = path.extension().is_some_and(|e| e == "rs")
            || path.file_name().is_some_and(|n| n == "Cargo.toml");
        let Ok(modified) = meta.modified() else { continue };
        if relevant && newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            *newest = Some((modified, path));
        }
    }
}
