//! Shared by the config tests: the fixtures directory, made private.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

/// `tests/fixtures/<rel>`.
pub(crate) fn fixture(rel: &str) -> PathBuf {
    fixtures_dir().join(rel)
}

/// `tests/fixtures`, with every file in it made private (mode 0600) first:
/// git keeps no permission bits, so a fresh checkout has them open to
/// everyone, and tokens in files open to other users are refused beyond
/// loopback, as an operator's would be.
pub(crate) fn fixtures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    make_private(&dir);
    dir
}

fn make_private(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            make_private(&path);
        } else {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}
