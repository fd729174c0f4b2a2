//! The hybrid relay wire protocol, with no I/O.
//!
//! An edge agent dials out to the cloud agent and the two exchange
//! [`Frame`]s inside WebSocket binary messages (one or more whole frames per
//! message). This crate knows how to encode and decode those frames, how the
//! handshake proves the edge's token without sending it, and the per-stream
//! rules that both sides enforce: credit-based flow control and the stream
//! life cycle. It never touches a socket, a task or a clock: callers pass in
//! bytes, nonces and events, so every rule is unit- and property-tested.
//!
//! # Layout
//! - [`frame`]: the [`Frame`] enum, [`encode`](Frame::encode) and [`decode`].
//! - [`handshake`]: HMAC-SHA256 challenge-response proofs and refusal reasons.
//! - [`nodes`]: the cluster frames' entries (version 4) and their bounds.
//! - [`flow`]: [`SendWindow`] and [`RecvWindow`], credit accounting in
//!   cumulative byte offsets, with receive windows tuned per stream out of a
//!   per-tunnel [`RecvBudget`].
//! - [`stream`]: [`StreamState`] (half-close and reset rules) and
//!   [`StreamIds`] (who may open which id).
//!
//! The format is specified in `docs/protocol.md`.

pub mod enrolment;
pub mod flow;
pub mod frame;
pub mod handshake;
pub mod nodes;
pub mod origin;
pub mod stream;

pub use enrolment::{BadCode, ENROL_SECRET_LEN, EnrolmentCode, secret_digest};
pub use flow::{FlowError, INITIAL_STREAM_WINDOW, RecvBudget, RecvWindow, SendWindow};
pub use frame::{
    DecodeError, EdgeReport, Frame, GoAwayCode, HEADER_LEN, MAX_TEXT_LEN, OpenCode, ProbeExchange,
    ResetCode, decode, frame_len,
};
pub use handshake::{
    AUTH_PROOF_LEN, NONCE_LEN, RefuseCode, auth_proof, server_proof, verify_auth_proof,
    verify_server_proof,
};
pub use nodes::{MAX_NODES, NodeAddr, NodeLink};
pub use origin::{SendProxy, StreamOrigin};
pub use stream::{StreamError, StreamIds, StreamState};

/// The protocol version this build speaks. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 8;
/// The oldest protocol version this build still accepts. Version 1's
/// window updates carried a consumed offset, version 2's a limit; version 3
/// refuses empty `Data` frames and answers the latest ping; version 4 adds
/// the cluster frames (`Nodes`, `NodeLinks`) and nothing else, so a cloud
/// serves version 3 edges as before, without them; version 5 adds the
/// fleet's refusal code (`Revoked`); version 6 adds enrolment, which happens
/// on a connection of its own, and probes; version 7 lets a probe carry a
/// send/expect exchange, sent only to edges that speak it; version 8 lets
/// an `Open` carry the stream's origin (its client, and a PROXY header to
/// write), likewise sent only to edges that speak it (docs/protocol.md,
/// "Versioning").
pub const MIN_PROTOCOL_VERSION: u16 = 3;
/// The first version whose tunnels may carry the cluster frames.
pub const NODES_VERSION: u16 = 4;
/// The first version that knows [`RefuseCode::Revoked`].
pub const FLEET_VERSION: u16 = 5;
/// The first version with enrolment (`Enroll`, `Enrolled`, refusal codes
/// 9 to 12): a cloud whose `Challenge` offers less cannot redeem a code.
pub const ENROL_VERSION: u16 = 6;
/// The first version whose tunnels carry end-to-end probes (`Probe`,
/// `ProbeResult`).
pub const PROBE_VERSION: u16 = 6;
/// The first version whose `Probe` may carry a send/expect exchange.
pub const PROBE_EXCHANGE_VERSION: u16 = 7;
/// The first version whose `Open` may carry a [`StreamOrigin`].
pub const ORIGIN_VERSION: u16 = 8;

/// Largest frame payload a peer may send unless the handshake lowers it.
/// Checked on the length field, before any allocation.
pub const DEFAULT_MAX_FRAME_PAYLOAD: u32 = 256 * 1024;
/// Largest receive window one stream may grow to (each starts at
/// [`INITIAL_STREAM_WINDOW`]).
pub const DEFAULT_STREAM_WINDOW: u32 = 1024 * 1024;
/// Bytes the streams of one tunnel may add to their receive windows beyond
/// the initial window, together.
pub const DEFAULT_TUNNEL_WINDOW_BUDGET: u64 = 32 * 1024 * 1024;
/// Streams open at once on one tunnel unless configured otherwise.
pub const DEFAULT_MAX_STREAMS: u32 = 4096;
