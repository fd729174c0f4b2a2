//! `[events]` of the cloud config: [`EventsConfig`], the event log of what
//! happened on the agent (tunnels, mappings, nodes, limits) and the
//! webhooks each event is posted to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::control::ControlConfig;
use crate::defaults::{self as d, serde_fns};
use crate::error::{ConfigError, Doc};
use crate::values::{self, Dur};
use crate::{DEFAULT_EVENTS_FILE, load};

/// `[events]`: how many events the agent keeps, where it writes them and
/// which URLs it posts each one to. Present with its defaults when the
/// table is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// `max_events`: events kept in memory and, after compaction, in the
    /// file; within [`EVENTS_MAX_RANGE`](crate::EVENTS_MAX_RANGE), default
    /// [`DEFAULT_EVENTS_MAX`](crate::DEFAULT_EVENTS_MAX).
    pub max_events: usize,
    /// `file`: the JSON-lines file the events persist in, resolved against
    /// the config file's directory. Default
    /// [`DEFAULT_EVENTS_FILE`](crate::DEFAULT_EVENTS_FILE) beside
    /// `[control] state_file`; `None` (kept in memory only) without
    /// `[control]` and without `file`.
    pub file: Option<PathBuf>,
    /// `webhooks`: `http://` URLs each event is POSTed to as JSON, at most
    /// [`MAX_WEBHOOKS`](crate::MAX_WEBHOOKS); default none.
    pub webhooks: Vec<String>,
    /// `webhook_timeout`: time one POST may take; within
    /// [`WEBHOOK_TIMEOUT_RANGE`](crate::WEBHOOK_TIMEOUT_RANGE).
    pub webhook_timeout: Duration,
    /// `webhook_queue`: events waiting per URL; when full the oldest is
    /// dropped (and counted). Within
    /// [`WEBHOOK_QUEUE_RANGE`](crate::WEBHOOK_QUEUE_RANGE).
    pub webhook_queue: usize,
    /// `webhook_retries`: further attempts after a failed POST, with
    /// backoff, before the event is given up (and counted). Within
    /// [`WEBHOOK_RETRIES_RANGE`](crate::WEBHOOK_RETRIES_RANGE).
    pub webhook_retries: u32,
}

impl EventsConfig {
    /// The defaults, with the file beside `state_file` when there is one.
    pub fn defaults(state_file: Option<&Path>) -> Self {
        Self {
            max_events: d::DEFAULT_EVENTS_MAX as usize,
            file: state_file.map(default_file),
            webhooks: Vec::new(),
            webhook_timeout: d::DEFAULT_WEBHOOK_TIMEOUT,
            webhook_queue: d::DEFAULT_WEBHOOK_QUEUE as usize,
            webhook_retries: d::DEFAULT_WEBHOOK_RETRIES,
        }
    }
}

/// [`DEFAULT_EVENTS_FILE`] in the directory of `state_file`.
fn default_file(state_file: &Path) -> PathBuf {
    match state_file.parent() {
        Some(dir) => dir.join(DEFAULT_EVENTS_FILE),
        None => PathBuf::from(DEFAULT_EVENTS_FILE),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvents {
    #[serde(default = "serde_fns::events_max")]
    max_events: Spanned<u32>,
    file: Option<Spanned<PathBuf>>,
    #[serde(default = "serde_fns::webhooks")]
    webhooks: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "serde_fns::webhook_timeout")]
    webhook_timeout: Spanned<Dur>,
    #[serde(default = "serde_fns::webhook_queue")]
    webhook_queue: Spanned<u32>,
    #[serde(default = "serde_fns::webhook_retries")]
    webhook_retries: Spanned<u32>,
}

impl RawEvents {
    /// Checks `[events]`; `control` gives the default file's directory.
    pub(crate) fn validate(
        self,
        doc: &Doc<'_>,
        control: Option<&ControlConfig>,
    ) -> Result<EventsConfig, ConfigError> {
        let max_events =
            values::in_range(doc, "events.max_events", &self.max_events, d::EVENTS_MAX_RANGE)?;
        let file = match &self.file {
            Some(path) => Some(load::path(doc, "events.file", path)?),
            None => control.map(|c| default_file(&c.state_file)),
        };
        if self.webhooks.get_ref().len() > d::MAX_WEBHOOKS {
            return Err(doc.error_at(
                self.webhooks.span(),
                format!(
                    "events.webhooks: {} URLs, expected at most {}",
                    self.webhooks.get_ref().len(),
                    d::MAX_WEBHOOKS
                ),
            ));
        }
        let mut webhooks = Vec::with_capacity(self.webhooks.get_ref().len());
        for (i, url) in self.webhooks.get_ref().iter().enumerate() {
            check_webhook_url(url.get_ref())
                .map_err(|m| doc.error_at(url.span(), format!("events.webhooks[{i}]: {m}")))?;
            if webhooks.contains(url.get_ref()) {
                return Err(doc.error_at(
                    url.span(),
                    format!("events.webhooks[{i}]: listed twice; each URL once"),
                ));
            }
            webhooks.push(url.get_ref().clone());
        }
        let webhook_timeout =
            values::nonzero(doc, "events.webhook_timeout", &self.webhook_timeout)?;
        if webhook_timeout > *d::WEBHOOK_TIMEOUT_RANGE.end() {
            return Err(doc.error_at(
                self.webhook_timeout.span(),
                format!(
                    "events.webhook_timeout: {} is out of range, expected at most {}s",
                    doc.snippet(self.webhook_timeout.span()),
                    d::WEBHOOK_TIMEOUT_RANGE.end().as_secs()
                ),
            ));
        }
        let webhook_queue = values::in_range(
            doc,
            "events.webhook_queue",
            &self.webhook_queue,
            d::WEBHOOK_QUEUE_RANGE,
        )?;
        let webhook_retries = values::in_range(
            doc,
            "events.webhook_retries",
            &self.webhook_retries,
            d::WEBHOOK_RETRIES_RANGE,
        )?;
        Ok(EventsConfig {
            max_events: max_events as usize,
            file,
            webhooks,
            webhook_timeout,
            webhook_queue: webhook_queue as usize,
            webhook_retries,
        })
    }
}

/// A webhook URL: `http://host[:port][/path]`, no spaces or control
/// characters. Only plain HTTP: the agent's HTTP client is built without
/// TLS (post to a receiver on the same host or a private network).
fn check_webhook_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "invalid URL {url:?}, expected http://host[:port]/path (https:// is not supported: \
             post to a receiver on this host or a private network)"
        ));
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let bad_char = url.chars().any(|c| c.is_whitespace() || c.is_control());
    if host.is_empty() || bad_char || url.len() > 2048 {
        return Err(format!(
            "invalid URL {url:?}, expected http://host[:port]/path without spaces, at most 2048 \
             bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_plain_http_with_a_host() {
        for ok in ["http://127.0.0.1:9000/hook", "http://hooks.internal", "http://[::1]:80/x?a=b"] {
            assert_eq!(check_webhook_url(ok), Ok(()), "{ok}");
        }
        for bad in ["https://x/", "ftp://x", "http://", "http:///path", "http://a b/", "x"] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_file_sits_beside_the_state_file() {
        let events = EventsConfig::defaults(Some(Path::new("/var/lib/relay/state.json")));
        assert_eq!(events.file, Some(PathBuf::from("/var/lib/relay/relay-cloud-events.jsonl")));
        assert_eq!(EventsConfig::defaults(None).file, None);
    }
}
