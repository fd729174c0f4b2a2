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
//! - `fleet`: which edges may connect, with which tokens, in which groups:
//!   the config file's with the run-time records on top; `edge_changes`
//!   plans adding, removing, rotating and revoking them.
//! - `handshake`: the server side of the tunnel handshake.
//! - `tunnel_listener`: accepts WebSocket (optionally TLS) connections.
//! - `directory`: the cluster's nodes as edges are told them (version 4
//!   tunnels follow it); empty when the agent runs alone.
//! - `gate`: bounds unauthenticated handshakes, overall and per source.
//! - `log_limit`: bounds what repeated refusals log.
//! - `mapping`: one mapping at run time: accept loop, client allowlist,
//!   relay, figures.
//! - `proxy_header`: the PROXY protocol header a load balancer in
//!   `[proxy_protocol] from` sends first, read exactly and bounded.
//! - `mappings`: the mapping table; add, drain, remove and atomic batches.
//! - `store`: the state file that makes run-time changes survive restarts.
//! - `metrics`, `sampler`: live figures with bounded memory, sampled once a
//!   second into snapshots.
//! - `events`: the event log (tunnels, mappings, nodes, limits), in
//!   memory and in a JSON-lines file, with webhooks.
//! - `control`: the HTTP control API (`docs/control-api.md`).

mod client_limits;
mod clock;
mod cloud;
mod cluster;
mod control;
mod directory;
mod edge_changes;
mod edges;
mod enrolment;
mod errors;
mod events;
mod fleet;
mod gate;
mod handshake;
mod log_limit;
mod mapping;
mod mappings;
mod metrics;
mod net;
mod probes;
mod proxy_header;
mod reload;
mod sampler;
mod shared_port;
mod sniff;
mod state_check;
mod store;
mod tunnel_listener;

pub use cloud::{Cloud, MappingStatus, ReloadReport, StartError};
pub use directory::NodeDirectory;

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

    /// Reads a PROXY protocol header from `data` as a mapping listener
    /// would (without the timeout). Returns how many bytes it took.
    ///
    /// # Panics
    /// When the read takes a byte past the header's limits, or a v1 header
    /// it accepts does not end in CRLF (a bug).
    pub fn proxy_header(data: &[u8]) -> usize {
        crate::proxy_header::fuzz_read(data)
    }

    /// What a shared listen address makes of `data` as a connection's
    /// first bytes, and of each of its prefixes.
    ///
    /// # Panics
    /// When a name is found that is not normalized (a bug).
    pub fn sniff(data: &[u8]) {
        crate::sniff::fuzz_peek(data);
    }
}

/// Checks what `--check` can check beyond parsing: the TLS files load,
/// and the state file (with `[control]`) can be written. Returns a
/// one-line summary of the configuration, with the `pin_sha256` of the
/// certificate's key for edges that pin it. The config's `warnings` are
/// the caller's to show.
///
/// # Errors
/// If the TLS certificate or key cannot be used, or the state file's
/// directory is not writable.
pub fn check(config: &config::CloudConfig) -> Result<String, StartError> {
    let transport = match &config.tunnel.tls {
        Some(files) => {
            tunnel::tls::server_config(&files.cert, &files.key)?;
            // What edges may pin: the key of the certificate served.
            let pin = tunnel::tls::pin_of_cert_file(&files.cert)?;
            format!("wss, pin_sha256 = \"{pin}\"")
        }
        None => "plain ws".to_owned(),
    };
    let state = match &config.control {
        Some(control) => {
            state_check::check_writable(&control.state_file).map_err(StartError::State)?;
            format!(", state file {}", control.state_file.display())
        }
        None => String::new(),
    };
    Ok(format!(
        "tunnel on {} ({transport}), {} edge(s), {} mapping(s){state}",
        config.tunnel.listen,
        config.edges.len(),
        config.mappings.len()
    ))
}
