//! `[control]` of the cloud config: [`ControlConfig`], the local control
//! API of `relay-cloud`.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::defaults::serde_fns;
use crate::error::{ConfigError, Doc};
use crate::mapping::listen_clash;
use crate::reach::Reach;
use crate::secret::{ADMIN_TOKEN_KEYS, Secret, TokenKeys};
use crate::tunnel::TunnelListenConfig;
use crate::values::{self, Addr, Dur};
use crate::{DEFAULT_CONTROL_STATE_FILE, EdgeEntry, MappingConfig, load};

/// `[control]`: the control API of the cloud agent (mappings added at run
/// time), guarded by an admin token.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// `listen`: socket address of the API; default
    /// [`DEFAULT_CONTROL_LISTEN`](crate::DEFAULT_CONTROL_LISTEN). It must not
    /// clash with `tunnel.listen` or any mapping's `listen`.
    pub listen: SocketAddr,
    /// From `admin_token` or the file named by `admin_token_file`; same
    /// rules as edge tokens, and different from every edge's token.
    pub admin_token: Secret,
    /// `state_file`: where the agent keeps mappings added through the API,
    /// resolved against the config file's directory. Default
    /// [`DEFAULT_CONTROL_STATE_FILE`](crate::DEFAULT_CONTROL_STATE_FILE) in
    /// the first directory of `$STATE_DIRECTORY` (which systemd's
    /// `StateDirectory=` sets, writable under `ProtectSystem=strict`), or
    /// beside the config file when that is not set. Not read when the
    /// config loads.
    pub state_file: PathBuf,
    /// `request_timeout`: time a client has to send a request's headers,
    /// and then its body; idle connections are closed after it too.
    /// Default [`DEFAULT_CONTROL_REQUEST_TIMEOUT`](crate::DEFAULT_CONTROL_REQUEST_TIMEOUT).
    pub request_timeout: Duration,
    /// `max_connections`: connections served at once; more wait to be
    /// accepted. Default
    /// [`DEFAULT_CONTROL_MAX_CONNECTIONS`](crate::DEFAULT_CONTROL_MAX_CONNECTIONS).
    pub max_connections: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    #[serde(default = "serde_fns::control_listen")]
    listen: Spanned<Addr>,
    admin_token: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<PathBuf>>,
    state_file: Option<Spanned<PathBuf>>,
    #[serde(default = "serde_fns::control_request_timeout")]
    request_timeout: Spanned<Dur>,
    #[serde(default = "serde_fns::control_max_connections")]
    max_connections: Spanned<u32>,
}

impl RawControl {
    /// Checks `[control]` (spanning `span`) against the listeners and the
    /// edge tokens of the rest of the file.
    pub(crate) fn validate(
        self,
        doc: &Doc<'_>,
        span: Range<usize>,
        (tunnel, edges, mappings): (&TunnelListenConfig, &[EdgeEntry], &[MappingConfig]),
        warnings: &mut Vec<String>,
    ) -> Result<ControlConfig, ConfigError> {
        let listen = self.listen.get_ref().0;
        // A defaulted listen has no position: report a clash at `[control]`.
        let (shown, at) = if self.listen.span() == (0..0) {
            (format!("\"{listen}\" (the default)"), span.clone())
        } else {
            (format!("\"{listen}\""), self.listen.span())
        };
        if let Some(m) = listen_clash(listen, None, &shown, tunnel, mappings) {
            return Err(doc.error_at(at, format!("control.listen: {m}")));
        }
        // Where a clash with an edge token is reported: the key that was set.
        let (token_key, token_span) = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => ("admin_token", t.span()),
            (None, Some(f)) => ("admin_token_file", f.span()),
            (None, None) => ("admin_token", span.clone()),
        };
        let admin_token = TokenKeys {
            table: "control",
            table_span: span,
            names: ADMIN_TOKEN_KEYS,
            token: self.admin_token,
            token_file: self.admin_token_file,
            // The admin token is used on the control listener.
            reach: &Reach::of_listener("control.listen", listen),
        }
        .resolve(doc, warnings)?;
        if let Some(i) = edges.iter().position(|e| e.token.expose() == admin_token.expose()) {
            return Err(doc.error_at(
                token_span,
                format!(
                    "control.{token_key}: admin token must differ from every edge token \
                     (same as edges[{i}])"
                ),
            ));
        }
        Ok(ControlConfig {
            listen,
            admin_token,
            state_file: match &self.state_file {
                Some(path) => load::path(doc, "control.state_file", path)?,
                None => default_state_file(doc, std::env::var_os("STATE_DIRECTORY").as_deref()),
            },
            request_timeout: values::nonzero(
                doc,
                "control.request_timeout",
                &self.request_timeout,
            )?,
            max_connections: values::in_range(
                doc,
                "control.max_connections",
                &self.max_connections,
                crate::defaults::CONTROL_MAX_CONNECTIONS_RANGE,
            )?,
        })
    }
}

/// The state file when `state_file` is not set: in the first directory
/// of `state_directory` (the value of `STATE_DIRECTORY`, a `:`-separated
/// list of absolute paths), else beside the config file.
fn default_state_file(doc: &Doc<'_>, state_directory: Option<&std::ffi::OsStr>) -> PathBuf {
    let first = state_directory
        .and_then(|dirs| std::env::split_paths(dirs).next())
        .filter(|dir| dir.is_absolute());
    match first {
        Some(dir) => dir.join(DEFAULT_CONTROL_STATE_FILE),
        None => doc.resolve(Path::new(DEFAULT_CONTROL_STATE_FILE)),
    }
}

#[cfg(test)]
mod state_file_tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn default_state_file_follows_systemds_state_directory() {
        let doc = Doc { text: "", origin: Path::new("/etc/relay/cloud.toml"), mode: None };
        let beside = PathBuf::from("/etc/relay/relay-cloud-state.json");
        assert_eq!(default_state_file(&doc, None), beside);
        assert_eq!(default_state_file(&doc, Some(OsStr::new(""))), beside);
        assert_eq!(default_state_file(&doc, Some(OsStr::new("relative/dir"))), beside);
        assert_eq!(
            default_state_file(&doc, Some(OsStr::new("/var/lib/relay-cloud"))),
            PathBuf::from("/var/lib/relay-cloud/relay-cloud-state.json")
        );
        assert_eq!(
            default_state_file(&doc, Some(OsStr::new("/var/lib/a:/var/lib/b"))),
            PathBuf::from("/var/lib/a/relay-cloud-state.json")
        );
    }
}
