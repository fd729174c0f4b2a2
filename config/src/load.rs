//! Reading a config file and deserializing it, shared by both configs.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::error::{ConfigError, Doc};
use crate::parse_error;

/// Reads `path` as UTF-8 text, with its permission bits (inline tokens in
/// a file open to other users are refused or warned about).
pub(crate) fn read(path: &Path) -> Result<(String, Option<u32>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, format!("cannot read config file: {e}")))?;
    Ok((text, crate::secret::file_mode(path)))
}

/// Deserializes the raw (unvalidated) form of a config.
pub(crate) fn parse<T: DeserializeOwned>(doc: &Doc<'_>) -> Result<T, ConfigError> {
    toml::from_str(doc.text).map_err(|e| parse_error::convert(doc, &e))
}

/// Checks that a path key is not empty and resolves it against the config
/// file's directory.
pub(crate) fn path(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<PathBuf>,
) -> Result<PathBuf, ConfigError> {
    resolve(doc, key, value, "a file name")
}

/// As [`path`], for a directory.
pub(crate) fn dir(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<PathBuf>,
) -> Result<PathBuf, ConfigError> {
    resolve(doc, key, value, "a directory")
}

fn resolve(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<PathBuf>,
    expected: &str,
) -> Result<PathBuf, ConfigError> {
    if value.get_ref().as_os_str().is_empty() {
        return Err(doc.error_at(value.span(), format!("{key}: empty path, expected {expected}")));
    }
    Ok(doc.resolve(value.get_ref()))
}
