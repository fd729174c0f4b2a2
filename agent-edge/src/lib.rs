//! `relay-edge`: the on-prem side of hybrid relay.
//!
//! The edge agent accepts no inbound connection at all. It dials out to
//! the cloud agent with a small pool of tunnels, redials each one forever
//! with jittered exponential backoff, and for every stream the cloud opens
//! it connects to the destination, if its own allowlist permits it.
//!
//! # Layout
//! - [`Edge`]: starts the pool from a [`config::EdgeConfig`], stops it
//!   gracefully.
//! - `dial`: TCP, TLS for `wss://`, WebSocket, then the client side of the
//!   handshake.
//! - `fleet`: which URLs to dial: the configured one, and in a cluster each
//!   node the cloud lists (followed as nodes join and leave).
//! - `pool`: a pool per URL; one task per tunnel slot: dial, serve, back
//!   off, redial; a retired pool's tunnels drain and close when idle.
//! - `connector`: allowlist check, destination connect, relay.
//! - `reload`: what a re-read config file changes (SIGHUP): the stream
//!   policy live, the rest after a restart.
//! - `report`: host load (sysinfo) and counters, sent to the cloud every
//!   few seconds.
//! - [`backoff`]: the retry delay schedule (pure, unit-tested).

pub mod backoff;
mod connector;
mod dial;
mod edge;
pub mod enrol;
mod fleet;
mod pool;
mod proxy_header;
mod reload;
mod report;

pub use dial::DialError;
pub use edge::Edge;
pub use reload::ReloadReport;

/// Checks what `--check` can check beyond parsing: the CA file loads.
/// The config's `warnings` are the caller's to show.
/// Returns a one-line summary of the configuration.
///
/// # Errors
/// If `ca_file` cannot be used.
pub fn check(config: &config::EdgeConfig) -> Result<String, tunnel::tls::TlsError> {
    if config.cloud_url.tls || config.ca_file.is_some() {
        tunnel::tls::client_config(tunnel::tls::ClientTrust::of(config))?;
    }
    let trust = if !config.cloud_url.tls {
        "plain ws".to_owned()
    } else {
        let roots = match (&config.ca_file, config.public_roots) {
            (Some(_), true) => "ca_file and the public roots",
            (Some(_), false) => "ca_file only",
            (None, _) => "the public roots",
        };
        match config.pin_sha256.len() {
            0 => format!("trusting {roots}"),
            n => format!("trusting {roots}, {n} pinned key(s)"),
        }
    };
    Ok(format!(
        "edge {} dials {} ({trust}) with {} tunnel(s), {} allowed destination(s)",
        config.edge_id,
        config.cloud_url,
        config.tunnels,
        config.allow.len()
    ))
}
