//! The state file must be writable before the agent serves: otherwise
//! every change through the control API would fail, one by one, long
//! after the start (as with the state file beside a config in `/etc`
//! under systemd's `ProtectSystem=strict`).

use std::fs::OpenOptions;
use std::path::Path;

/// Creates and removes a probe file beside `state_file`.
///
/// # Errors
/// A message naming the state file, its directory and what to do.
pub(crate) fn check_writable(state_file: &Path) -> Result<(), String> {
    let dir = match state_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = state_file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let probe = dir.join(format!(".{name}.write-check-{}", std::process::id()));
    let created = OpenOptions::new().write(true).create_new(true).open(&probe);
    match created {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "state file {}: cannot write in {} ({e}), so every change through the control API \
             would fail; set [control] state_file to a writable place (under systemd the unit's \
             StateDirectory= is the default: /var/lib/relay-cloud)",
            state_file.display(),
            dir.display()
        )),
    }
}
