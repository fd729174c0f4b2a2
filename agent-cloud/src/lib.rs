//! `relay-cloud`: the public side of hybrid relay.
//!
//! The cloud agent accepts tunnels that edge agents dial out to, and
//! listens on each mapping's public address. Every client connection on a
//! mapping becomes a stream on a live tunnel of the mapping's edge.
//!
//! # Layout
//! - [`Cloud`]: starts everything from a [`config::CloudConfig`] and stops
//!   it gracefully; the binary's `main` is a thin wrapper around it.
//! - `edges`: the registry of connected edges, their tunnels and session
//!   fencing; picks the least loaded tunnel for a new stream.
//! - `handshake`: the server side of the tunnel handshake.
//! - `tunnel_listener`: accepts WebSocket (optionally TLS) connections.
//! - `gate`: bounds unauthenticated handshakes, overall and per address.
//! - `mapping`: one mapping at run time: accept loop, client allowlist,
//!   relay, figures.
//! - `mappings`: the mapping table; add, drain, remove and atomic batches.
//! - `store`: the state file that makes run-time changes survive restarts.
//! - `metrics`, `sampler`: live figures with bounded memory, sampled once a
//!   second into snapshots.
//! - `control`: the HTTP control API (`docs/control-api.md`).

mod clock;
mod cloud;
mod control;
mod edges;
mod errors;
mod gate;
mod handshake;
mod mapping;
mod mappings;
mod metrics;
mod net;
mod sampler;
mod store;
mod tunnel_listener;

pub use cloud::{Cloud, MappingStatus, StartError};

/// Entry points for the fuzz targets in `fuzz/`; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Plans `changes` as the control API would, against a fixed table of
    /// two mappings and one edge, changing nothing. Returns how many
    /// changes passed planning.
    ///
    /// # Panics
    /// When planning lets through a change the commit could not apply (a
    /// bug; this is what the fuzz target looks for).
    pub fn plan(changes: &[api::Change]) -> usize {
        crate::mappings::fuzz_plan(changes)
    }
}

/// Checks what `--check` can check beyond parsing: the TLS files load.
/// Returns a one-line summary of the configuration.
///
/// # Errors
/// If the TLS certificate or key cannot be used.
pub fn check(config: &config::CloudConfig) -> Result<String, StartError> {
    if let Some(files) = &config.tunnel.tls {
        tunnel::tls::server_config(&files.cert, &files.key)?;
    }
    Ok(format!(
        "tunnel on {} ({}), {} edge(s), {} mapping(s)",
        config.tunnel.listen,
        if config.tunnel.tls.is_some() { "wss" } else { "plain ws" },
        config.edges.len(),
        config.mappings.len()
    ))
}
