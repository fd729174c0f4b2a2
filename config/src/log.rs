//! `[log]` of both configs: [`LogConfig`] and [`LogRotation`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::defaults::{self as d, serde_fns};
use crate::error::{ConfigError, Doc};
use crate::{ParseError, load, values};

/// `[log]`: write the agent's log to rotated files in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `dir`: the directory of the log files, resolved against the config
    /// file's directory; required. Not created when the config loads.
    pub dir: PathBuf,
    /// `file_prefix`: start of every log file name; 1..=64 characters of
    /// `[A-Za-z0-9._-]`. Default
    /// [`DEFAULT_CLOUD_LOG_FILE_PREFIX`](crate::DEFAULT_CLOUD_LOG_FILE_PREFIX)
    /// or [`DEFAULT_EDGE_LOG_FILE_PREFIX`](crate::DEFAULT_EDGE_LOG_FILE_PREFIX).
    pub file_prefix: String,
    /// `rotation`: when a new file is started; default
    /// [`DEFAULT_LOG_ROTATION`](crate::DEFAULT_LOG_ROTATION).
    pub rotation: LogRotation,
    /// `max_files`: keep at most this many files, deleting the oldest;
    /// at least 1. `None` keeps them all.
    pub max_files: Option<usize>,
}

/// `[log] rotation`: how often a new log file is started; the periods of
/// `tracing-appender`'s `Rotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogRotation {
    /// `"minutely"`: a new file every minute.
    Minutely,
    /// `"hourly"`: a new file every hour.
    Hourly,
    /// `"daily"`: a new file every day (the default).
    Daily,
    /// `"never"`: one file, never rotated.
    Never,
}

impl LogRotation {
    /// Every value, in the order of the accepted strings.
    pub const ALL: [LogRotation; 4] = [Self::Minutely, Self::Hourly, Self::Daily, Self::Never];

    /// The string written in the config: `"minutely"`, `"hourly"`, `"daily"`
    /// or `"never"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minutely => "minutely",
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Never => "never",
        }
    }
}

impl fmt::Display for LogRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogRotation {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            ParseError(format!(
                "invalid rotation {s:?}, expected one of \"minutely\", \"hourly\", \"daily\" \
                 or \"never\""
            ))
        })
    }
}

impl<'de> de::Deserialize<'de> for LogRotation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LogRotation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of \"minutely\", \"hourly\", \"daily\" or \"never\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LogRotation, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    dir: Spanned<PathBuf>,
    file_prefix: Option<Spanned<String>>,
    #[serde(default = "serde_fns::log_rotation")]
    rotation: LogRotation,
    max_files: Option<Spanned<u32>>,
}

impl RawLog {
    /// Checks `[log]`; `default_prefix` is the agent's file prefix.
    pub(crate) fn validate(
        self,
        doc: &Doc<'_>,
        default_prefix: &str,
    ) -> Result<LogConfig, ConfigError> {
        let dir = load::dir(doc, "log.dir", &self.dir)?;
        let file_prefix = match &self.file_prefix {
            Some(p) => {
                values::check_name(p.get_ref(), "file prefix")
                    .map_err(|m| doc.error_at(p.span(), format!("log.file_prefix: {m}")))?;
                p.get_ref().clone()
            }
            None => default_prefix.to_owned(),
        };
        let max_files = match &self.max_files {
            Some(n) => Some(values::in_range(doc, "log.max_files", n, d::LOG_MAX_FILES_RANGE)?),
            None => None,
        };
        Ok(LogConfig {
            dir,
            file_prefix,
            rotation: self.rotation,
            max_files: max_files.map(|n| n as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_strings_round_trip() {
        for r in LogRotation::ALL {
            assert_eq!(r.as_str().parse::<LogRotation>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        let err = "Daily".parse::<LogRotation>().unwrap_err().to_string();
        assert!(err.contains("invalid rotation \"Daily\"") && err.contains("\"never\""), "{err}");
    }
}
