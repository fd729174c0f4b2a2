//! The tunnel runtime both agents share.
//!
//! A [`Tunnel`] multiplexes many TCP connections over one WebSocket, using
//! the frames and rules of the [`proto`] crate. The cloud agent opens
//! streams with [`Tunnel::open_stream`]; the edge agent receives them as
//! [`IncomingStream`]s. Either way a stream ends up in [`relay`], which
//! copies bytes between it and a TCP socket, carrying half-close and reset
//! across.
//!
//! # Layout
//! - [`mux`]: the tunnel itself: a reader loop (frames in, heartbeats) and a
//!   writer task (frames out, batched into WebSocket messages).
//! - [`stream`]: one stream's shared state and the halves a relay uses.
//! - [`relay`]: the copy loop between a stream and a TCP socket.
//! - [`wire`]: sending and receiving single frames during the handshake.
//! - [`ws`]: WebSocket framing after the HTTP upgrade (and the client's
//!   upgrade), written for the data path: no copy on the cloud's sends.
//! - [`tls`]: rustls configuration from PEM files.
//! - [`untrusted`]: peer text escaped for logs and terminals.
//!
//! # Memory bounds
//! Every queue is bounded: outbound frames share one bounded queue per
//! tunnel; inbound data for a stream is bounded by the stream's receive
//! window, enforced by [`proto::RecvWindow`] before anything is queued; a
//! peer that overruns it loses the tunnel.

mod buffers;
mod inbox;
pub mod mux;
pub mod rate;
pub mod relay;
pub mod service;
pub mod stream;
pub mod tls;
pub mod untrusted;
pub mod wire;
pub mod ws;

pub use mux::{
    Held, IncomingProbe, IncomingStream, MuxSettings, NodeList, OpenError, ProbeAnswer, ProbeError,
    Role, Tunnel, TunnelClosed, WindowBudget,
};
pub use relay::{ByteCounters, RelayEnd, RelayLimits, RelayOutcome, relay, relay_after};
pub use stream::{Inbound, MuxStream, StreamClosed};
