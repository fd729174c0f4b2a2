//! Arbitrary text as a cloud or edge config: loading must fail with an
//! error that names a line within the text (or none), never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count().max(1) + 1;
    for result in [
        config::CloudConfig::from_toml(text, Path::new("/nonexistent/fuzz/cloud.toml")).err(),
        config::EdgeConfig::from_toml(text, Path::new("/nonexistent/fuzz/edge.toml")).err(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(line) = result.line() {
            assert!(line <= lines, "error line {line} beyond the text's {lines} lines");
        }
        assert!(!result.to_string().is_empty());
    }
});
