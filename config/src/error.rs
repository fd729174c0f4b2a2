//! [`ConfigError`] and the helpers that give every message a file, a line
//! and a column; [`FieldError`] for values that come from elsewhere.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration problem, located in its file.
///
/// Displays as `<file>:<line>:<col>: <message>`, or `<file>: <message>` when
/// there is no position (an unreadable file, a missing section). The message
/// starts with the key at fault, e.g. `mappings[1].edge: unknown edge ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}", .file.display(), Position(*.line, *.column), .message)]
pub struct ConfigError {
    file: PathBuf,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

impl ConfigError {
    /// An error about `file` with no position in it.
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), line: None, column: None, message: message.into() }
    }

    /// The config file the error is about, as given by the caller.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The 1-based line of the offending key or value, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The 1-based column (in characters) of the offending key or value, when
    /// known.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// The message without the file and position prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A bad field of a value that did not come from a file, such as a mapping
/// sent to the control API ([`MappingConfig::from_parts`]).
///
/// Displays as `<field>: <message>`; the message is the one a config file
/// would get for the same value, e.g. ``listen: invalid socket address
/// "1.2.3": expected IP:port such as "0.0.0.0:8443" ...``.
///
/// [`MappingConfig::from_parts`]: crate::MappingConfig::from_parts
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field at fault, e.g. `"listen"`.
    pub field: &'static str,
    /// What is wrong with it, quoting the bad value and what was expected.
    pub message: String,
}

/// Formats `:line:col`, `:line` or nothing.
struct Position(Option<usize>, Option<usize>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(col)) => write!(f, ":{line}:{col}"),
            (Some(line), None) => write!(f, ":{line}"),
            _ => Ok(()),
        }
    }
}

/// The text being loaded and where it came from: turns byte spans into
/// positioned errors and resolves relative paths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doc<'a> {
    pub(crate) text: &'a str,
    pub(crate) origin: &'a Path,
    /// The permission bits of the file the text was read from; `None` for
    /// text from elsewhere, whose secrets are not checked for exposure.
    pub(crate) mode: Option<u32>,
}

impl Doc<'_> {
    /// An error at byte span `span`; a span of `0..0` (a defaulted value)
    /// means "no position".
    pub(crate) fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let mut err = ConfigError::new(self.origin, message);
        if span != (0..0) {
            let (line, col) = line_col(self.text, span.start);
            err.line = Some(line);
            err.column = Some(col);
        }
        err
    }

    /// The source text of `span` (empty for a defaulted value).
    pub(crate) fn snippet(&self, span: Range<usize>) -> &str {
        self.text.get(span).unwrap_or_default()
    }

    /// An error with no position.
    pub(crate) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.origin, message)
    }

    /// `path` as written if absolute, else relative to the config file's
    /// directory.
    pub(crate) fn resolve(&self, path: &Path) -> PathBuf {
        match self.origin.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_chars() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // `é` is two bytes but one column: `=` is at byte 10, column 4.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn display_with_and_without_position() {
        let doc = Doc { text: "x = 1\ny = 2\n", origin: Path::new("dir/c.toml"), mode: None };
        assert_eq!(doc.error_at(6..7, "y: bad").to_string(), "dir/c.toml:2:1: y: bad");
        assert_eq!(doc.error_at(0..0, "y: bad").to_string(), "dir/c.toml: y: bad");
        let err = doc.error("gone");
        assert_eq!(err.to_string(), "dir/c.toml: gone");
        assert_eq!(err.line(), None);
        assert_eq!(err.file(), Path::new("dir/c.toml"));
        assert_eq!(err.message(), "gone");
    }

    #[test]
    fn resolve_relative_to_config_dir() {
        let doc = Doc { text: "", origin: Path::new("/etc/relay/cloud.toml"), mode: None };
        assert_eq!(doc.resolve(Path::new("t.token")), Path::new("/etc/relay/t.token"));
        assert_eq!(doc.resolve(Path::new("/abs/t")), Path::new("/abs/t"));
        let bare = Doc { text: "", origin: Path::new("cloud.toml"), mode: None };
        assert_eq!(bare.resolve(Path::new("t.token")), Path::new("t.token"));
    }
}
