//! Tests that cannot run on this machine (no root, a tool missing): under
//! CI they fail, so a missing tool or permission is seen; on a
//! developer's machine they skip, loudly, saying what to install.

use std::io::Write;

/// Whether `CI` (its value, if set) asks for tests that cannot run to
/// fail: set to anything but empty, `0` or `false` (CI services set
/// `CI=true`).
pub fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// Whether this process runs under CI, from the `CI` environment variable.
pub fn under_ci() -> bool {
    is_ci(std::env::var("CI").ok().as_deref())
}

/// Reports that `test` cannot run here because of `why` (which should say
/// what to install or how to run it). Under CI this panics, failing the
/// test; elsewhere it prints `SKIPPED <test>: <why>` to stderr past the
/// test harness's capture, and the caller returns.
pub fn cannot_run(test: &str, why: &str) {
    if under_ci() {
        panic!("{test} cannot run under CI: {why}");
    }
    let _ =
        writeln!(std::io::stderr(), "SKIPPED {test}: {why} (under CI=true this fails the test)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_means_any_value_but_empty_zero_or_false() {
        for on in ["true", "TRUE", "1", "yes", "github"] {
            assert!(is_ci(Some(on)), "{on}");
        }
        for off in [None, Some(""), Some("0"), Some("false"), Some(" False ")] {
            assert!(!is_ci(off), "{off:?}");
        }
    }
}
