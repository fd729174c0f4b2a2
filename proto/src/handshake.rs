//! The edge's proof of its token, and the cloud's proof back.
//!
//! The token never crosses the wire. The cloud sends a fresh random nonce in
//! its challenge; the edge answers with its own nonce and an HMAC-SHA256 over
//! both nonces, the protocol version, its epoch and its id, keyed by the
//! token. A recorded answer is worthless against any later challenge. The
//! cloud then proves it knows the same token with an HMAC over the nonces in
//! the other order, so an edge also knows it reached the real cloud.

use ring::hmac;

use crate::frame::wire_enum;

/// Length of each side's random nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 proof.
pub const AUTH_PROOF_LEN: usize = 32;

const EDGE_LABEL: &[u8] = b"hybrid-relay edge auth v1";
const CLOUD_LABEL: &[u8] = b"hybrid-relay cloud auth v1";

wire_enum! {
    /// Why the cloud refused a handshake. Each cause is distinct so both
    /// sides can log exactly what went wrong.
    RefuseCode {
        /// The proof did not match the token configured for this edge id.
        BadToken = 1,
        /// No edge with this id is configured.
        UnknownEdge = 2,
        /// The edge speaks a protocol version the cloud does not.
        VersionMismatch = 3,
        /// A newer run of the same edge id is connected (session fencing).
        Superseded = 4,
        /// The edge already has as many tunnels as the cloud allows.
        TooManyTunnels = 5,
        /// The cloud is shutting down.
        ShuttingDown = 6,
        /// The handshake broke the protocol (wrong message, bad field).
        ProtocolError = 7,
        /// An operator revoked this edge: refused until it gets a new
        /// token. Protocol 5; a cloud sends `BadToken` to older edges.
        Revoked = 8,
        /// Enrolment (protocol 6): no code with this secret exists (never
        /// made, replaced by a newer one for its edge, or removed).
        UnknownCode = 9,
        /// Enrolment: the code's lifetime is over.
        CodeExpired = 10,
        /// Enrolment: the code was redeemed already; each works once.
        CodeUsed = 11,
        /// Enrolment: too many failed attempts from this address lately.
        RateLimited = 12,
        /// Enrolment: the cloud cannot record a redemption now (its state
        /// file or etcd failed); nothing was used up.
        Unavailable = 13,
    }
}

impl RefuseCode {
    /// Whether retrying with the same configuration can ever succeed soon.
    /// Used by the edge to pick a short or a long backoff.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Superseded
                | Self::TooManyTunnels
                | Self::ShuttingDown
                | Self::RateLimited
                | Self::Unavailable
        )
    }
}

fn edge_message(
    server_nonce: &[u8; NONCE_LEN],
    edge_nonce: &[u8; NONCE_LEN],
    version: u16,
    epoch: u64,
    edge_id: &str,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(EDGE_LABEL.len() + 2 * NONCE_LEN + 10 + edge_id.len());
    msg.extend_from_slice(EDGE_LABEL);
    msg.extend_from_slice(server_nonce);
    msg.extend_from_slice(edge_nonce);
    msg.extend_from_slice(&version.to_be_bytes());
    msg.extend_from_slice(&epoch.to_be_bytes());
    msg.extend_from_slice(edge_id.as_bytes());
    msg
}

fn cloud_message(
    server_nonce: &[u8; NONCE_LEN],
    edge_nonce: &[u8; NONCE_LEN],
    tunnel_id: u64,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CLOUD_LABEL.len() + 2 * NONCE_LEN + 8);
    msg.extend_from_slice(CLOUD_LABEL);
    msg.extend_from_slice(edge_nonce);
    msg.extend_from_slice(server_nonce);
    msg.extend_from_slice(&tunnel_id.to_be_bytes());
    msg
}

fn sign(token: &[u8], msg: &[u8]) -> [u8; AUTH_PROOF_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token);
    let tag = hmac::sign(&key, msg);
    let mut out = [0u8; AUTH_PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn verify(token: &[u8], msg: &[u8], proof: &[u8; AUTH_PROOF_LEN]) -> bool {
    // ring compares the tags in constant time.
    let key = hmac::Key::new(hmac::HMAC_SHA256, token);
    hmac::verify(&key, msg, proof).is_ok()
}

/// The proof an edge sends in its `Auth` frame.
pub fn auth_proof(
    token: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    edge_nonce: &[u8; NONCE_LEN],
    version: u16,
    epoch: u64,
    edge_id: &str,
) -> [u8; AUTH_PROOF_LEN] {
    sign(token, &edge_message(server_nonce, edge_nonce, version, epoch, edge_id))
}

/// Checks an edge's proof in constant time.
pub fn verify_auth_proof(
    token: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    edge_nonce: &[u8; NONCE_LEN],
    version: u16,
    epoch: u64,
    edge_id: &str,
    proof: &[u8; AUTH_PROOF_LEN],
) -> bool {
    verify(token, &edge_message(server_nonce, edge_nonce, version, epoch, edge_id), proof)
}

/// The proof the cloud sends in its `Welcome` frame.
pub fn server_proof(
    token: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    edge_nonce: &[u8; NONCE_LEN],
    tunnel_id: u64,
) -> [u8; AUTH_PROOF_LEN] {
    sign(token, &cloud_message(server_nonce, edge_nonce, tunnel_id))
}

/// Checks the cloud's proof in constant time.
pub fn verify_server_proof(
    token: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    edge_nonce: &[u8; NONCE_LEN],
    tunnel_id: u64,
    proof: &[u8; AUTH_PROOF_LEN],
) -> bool {
    verify(token, &cloud_message(server_nonce, edge_nonce, tunnel_id), proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: [u8; NONCE_LEN] = [1; NONCE_LEN];
    const E: [u8; NONCE_LEN] = [2; NONCE_LEN];

    #[test]
    fn matching_token_verifies() {
        let proof = auth_proof(b"secret-token", &S, &E, 1, 7, "edge-a");
        assert!(verify_auth_proof(b"secret-token", &S, &E, 1, 7, "edge-a", &proof));
    }

    #[test]
    fn any_changed_input_fails() {
        let proof = auth_proof(b"secret-token", &S, &E, 1, 7, "edge-a");
        assert!(!verify_auth_proof(b"other-token", &S, &E, 1, 7, "edge-a", &proof));
        assert!(!verify_auth_proof(b"secret-token", &E, &E, 1, 7, "edge-a", &proof));
        assert!(!verify_auth_proof(b"secret-token", &S, &S, 1, 7, "edge-a", &proof));
        assert!(!verify_auth_proof(b"secret-token", &S, &E, 2, 7, "edge-a", &proof));
        assert!(!verify_auth_proof(b"secret-token", &S, &E, 1, 8, "edge-a", &proof));
        assert!(!verify_auth_proof(b"secret-token", &S, &E, 1, 7, "edge-b", &proof));
    }

    #[test]
    fn a_recorded_proof_does_not_answer_a_new_challenge() {
        let recorded = auth_proof(b"secret-token", &S, &E, 1, 7, "edge-a");
        let fresh_server_nonce = [9; NONCE_LEN];
        assert!(!verify_auth_proof(
            b"secret-token",
            &fresh_server_nonce,
            &E,
            1,
            7,
            "edge-a",
            &recorded
        ));
    }

    #[test]
    fn edge_and_cloud_proofs_differ() {
        // Otherwise a fake cloud could reflect the edge's own proof back.
        let edge = auth_proof(b"t", &S, &E, 1, 0, "");
        let cloud = server_proof(b"t", &S, &E, 0);
        assert_ne!(edge, cloud);
        assert!(verify_server_proof(b"t", &S, &E, 0, &cloud));
        assert!(!verify_server_proof(b"t", &S, &E, 1, &cloud));
    }
}
