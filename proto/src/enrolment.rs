//! One-time enrolment codes: what `relayctl edges enroll` prints and
//! `relay-edge enroll` redeems.
//!
//! A code is `hr1.<secret>` or `hr1.<secret>.<pin>`, both parts unpadded
//! base64url: `secret` is [`ENROL_SECRET_LEN`] random bytes (128 bits, so
//! guessing one within its lifetime is hopeless even without the cloud's
//! rate limit), and `pin` the SHA-256 of the cloud's TLS public key
//! (SubjectPublicKeyInfo), which the edge checks before it sends the secret.
//! A cloud without TLS (loopback only) prints codes without a pin. The
//! cloud keeps only [`secret_digest`] of the secret, so its state file or
//! etcd holds nothing that redeems a code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

/// Random bytes in an enrolment code's secret.
pub const ENROL_SECRET_LEN: usize = 16;
/// What every code starts with: the format's version.
const PREFIX: &str = "hr1.";

/// A parsed enrolment code.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentCode {
    /// The secret the edge sends (after checking `pin`).
    pub secret: [u8; ENROL_SECRET_LEN],
    /// SHA-256 of the cloud's public key, when the cloud has TLS.
    pub pin: Option<[u8; 32]>,
}

impl std::fmt::Debug for EnrolmentCode {
    // The secret redeems the code: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolmentCode").field("pin", &self.pin.is_some()).finish_non_exhaustive()
    }
}

/// Why a text is not an enrolment code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "not an enrolment code: {0} (expected hr1.<secret>[.<pin>], as `relayctl edges enroll` prints it)"
)]
pub struct BadCode(&'static str);

impl EnrolmentCode {
    /// The code as printed.
    pub fn encode(&self) -> String {
        let mut out = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(self.secret));
        if let Some(pin) = &self.pin {
            out.push('.');
            out.push_str(&URL_SAFE_NO_PAD.encode(pin));
        }
        out
    }

    /// Parses a code as printed (surrounding white space ignored).
    ///
    /// # Errors
    /// [`BadCode`] saying which part is wrong.
    pub fn parse(text: &str) -> Result<Self, BadCode> {
        let rest =
            text.trim().strip_prefix(PREFIX).ok_or(BadCode("it does not start with hr1."))?;
        let mut parts = rest.split('.');
        let secret = parts.next().unwrap_or_default();
        let secret = URL_SAFE_NO_PAD
            .decode(secret)
            .ok()
            .and_then(|b| <[u8; ENROL_SECRET_LEN]>::try_from(b).ok())
            .ok_or(BadCode("the secret is not 22 characters of base64url"))?;
        let pin = match parts.next() {
            None => None,
            Some(pin) => Some(
                URL_SAFE_NO_PAD
                    .decode(pin)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(BadCode("the pin is not 43 characters of base64url"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(BadCode("it has more than three parts"));
        }
        Ok(Self { secret, pin })
    }
}

/// What the cloud stores of a code's secret: its SHA-256, lower-case hex.
pub fn secret_digest(secret: &[u8; ENROL_SECRET_LEN]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_with_and_without_a_pin() {
        let pinned = EnrolmentCode { secret: [0xfb; ENROL_SECRET_LEN], pin: Some([7; 32]) };
        let text = pinned.encode();
        assert_eq!(text.len(), 4 + 22 + 1 + 43);
        assert!(!text.contains(['+', '/', '=']), "safe in a shell and a URL: {text}");
        assert_eq!(EnrolmentCode::parse(&format!(" {text}\n")), Ok(pinned));
        let plain = EnrolmentCode { secret: [1; ENROL_SECRET_LEN], pin: None };
        assert_eq!(EnrolmentCode::parse(&plain.encode()), Ok(plain));
    }

    #[test]
    fn malformed_codes_say_which_part_is_wrong() {
        let good = EnrolmentCode { secret: [1; ENROL_SECRET_LEN], pin: Some([2; 32]) }.encode();
        let cases = [
            (good.replacen("hr1", "hr2", 1), "hr1."),
            (good.replacen("hr1.", "hr1.A", 1), "secret"),
            (format!("{good}x"), "pin"),
            (format!("{good}.x"), "three parts"),
            (String::new(), "hr1."),
        ];
        for (text, says) in cases {
            let err = EnrolmentCode::parse(&text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_digest_is_the_sha256_in_hex_and_the_secret_stays_out_of_debug() {
        let d = secret_digest(&[0; ENROL_SECRET_LEN]);
        assert_eq!(d, "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb");
        let code = EnrolmentCode { secret: [0xab; ENROL_SECRET_LEN], pin: None };
        assert!(!format!("{code:?}").contains("171"), "{code:?}");
    }
}
