//! rustls configuration from PEM files, with the ring crypto provider: the
//! cloud's server config, and the edge's client config with its trust
//! roots and public-key pins ([`ClientTrust`]).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use thiserror::Error;

/// A certificate, key or CA file could not be used.
#[derive(Debug, Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    /// The file at fault.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError { path: path.display().to_string(), reason: reason.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no certificate found (expected PEM \"BEGIN CERTIFICATE\")"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| err(path, format!("invalid PEM: {e}")))?
        .ok_or_else(|| err(path, "no private key found (expected PKCS#8, PKCS#1 or SEC1 PEM)"))
}

/// Server configuration for the cloud's tunnel listener.
///
/// # Errors
/// [`TlsError`] naming the file that cannot be read or used.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = read_key(key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| err(key, format!("does not match the certificate or is unusable: {e}")))?;
    Ok(Arc::new(config))
}

/// What the edge trusts in the cloud's certificate: from `ca_file`,
/// `public_roots` and `pin_sha256` of its config.
#[derive(Debug, Clone, Copy)]
pub struct ClientTrust<'a> {
    /// PEM trust roots (a private CA, or the cloud's own certificate).
    pub ca_file: Option<&'a Path>,
    /// Whether the built-in Mozilla roots (webpki-roots) are trusted too.
    pub public_roots: bool,
    /// When not empty, the certificate must also carry a public key whose
    /// SubjectPublicKeyInfo has one of these SHA-256 digests.
    pub pin_sha256: &'a [[u8; 32]],
}

impl<'a> ClientTrust<'a> {
    /// The trust an edge config asks for.
    pub fn of(config: &'a config::EdgeConfig) -> Self {
        Self {
            ca_file: config.ca_file.as_deref(),
            public_roots: config.public_roots,
            pin_sha256: &config.pin_sha256,
        }
    }
}

/// Client configuration for the edge: the certificates in `ca_file`, the
/// public web roots when asked for (a cloud with a private CA is then not
/// exposed to every public CA), and the key pins.
///
/// # Errors
/// [`TlsError`] if `ca_file` cannot be read or holds no usable certificate,
/// or if nothing at all would be trusted.
pub fn client_config(trust: ClientTrust<'_>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = webpki_verifier(trust, &[])?;
    let no_path =
        |e: &dyn std::fmt::Display| TlsError { path: String::new(), reason: e.to_string() };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| no_path(&e))?;
    let config = if trust.pin_sha256.is_empty() {
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    } else {
        let pinned = PinnedKeys { trusted: verifier, pins: trust.pin_sha256.to_vec() };
        builder.dangerous().with_custom_certificate_verifier(Arc::new(pinned)).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The chain verifier for `trust`'s roots and the certificates `extra`;
/// pins are not applied.
fn webpki_verifier(
    trust: ClientTrust<'_>,
    extra: &[CertificateDer<'static>],
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let public: &[TrustAnchor<'static>] =
        if trust.public_roots { webpki_roots::TLS_SERVER_ROOTS } else { &[] };
    let mut roots = root_store(trust.ca_file, public)?;
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| TlsError {
            path: String::new(),
            reason: format!("unusable CA certificate: {e}"),
        })?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| {
        TlsError {
            path: String::new(),
            reason: format!("no trust roots: set ca_file or public_roots ({e})"),
        }
    })
}

/// The trust roots: those in `ca_file`, then `public`.
fn root_store(
    ca_file: Option<&Path>,
    public: &[TrustAnchor<'static>],
) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| err(path, format!("unusable CA certificate: {e}")))?;
        }
    }
    roots.extend(public.iter().cloned());
    Ok(roots)
}

/// The SHA-256 of `end_entity`'s public key, as a TLS error if it does
/// not parse.
fn key_pin(end_entity: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    spki_sha256(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

/// A key pin as `pin_sha256` writes it, for messages.
fn shown_pin(digest: [u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The SHA-256 digest of a certificate's SubjectPublicKeyInfo (DER): the
/// value `pin_sha256` lists, base64-encoded.
///
/// # Errors
/// [`webpki::Error`] if the certificate cannot be parsed.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], webpki::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)?;
    let digest =
        ring::digest::digest(&ring::digest::SHA256, parsed.subject_public_key_info().as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(out)
}

/// `pin_sha256` of the first (leaf) certificate in a PEM file, as an edge
/// config writes it: what `relay-cloud --check` prints.
///
/// # Errors
/// [`TlsError`] if the file cannot be read or its certificate parsed.
pub fn pin_of_cert_file(path: &Path) -> Result<String, TlsError> {
    Ok(shown_pin(key_digest_of_cert_file(path)?))
}

/// [`spki_sha256`] of the first (leaf) certificate in a PEM file.
///
/// # Errors
/// [`TlsError`] if the file cannot be read or its certificate parsed.
pub fn key_digest_of_cert_file(path: &Path) -> Result<[u8; 32], TlsError> {
    let certs = read_certs(path)?;
    spki_sha256(&certs[0]).map_err(|e| err(path, format!("unusable certificate: {e}")))
}

/// Checks the chain as usual, then that the leaf's public key is pinned.
#[derive(Debug)]
struct PinnedKeys {
    trusted: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

/// Why a trusted certificate was refused: its key is not pinned.
#[derive(Debug, Error)]
#[error(
    "the cloud's public key (pin_sha256 \"{0}\") matches no configured pin_sha256: a \
     different key, or a rotated one not pinned yet"
)]
struct UnpinnedKey(String);

impl ServerCertVerifier for PinnedKeys {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.trusted.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let digest = key_pin(end_entity)?;
        if self.pins.contains(&digest) {
            return Ok(verified);
        }
        // `General`, not `InvalidCertificate(Other(..))`: rustls shows
        // only the latter's Debug form, and the operator needs this text.
        Err(rustls::Error::General(UnpinnedKey(shown_pin(digest)).to_string()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trusted.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trusted.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trusted.supported_verify_schemes()
    }
}

/// The certificate chain a cloud presented (leaf first), as
/// [`enrolment_client_config`] saw it.
pub type PresentedChain = Arc<std::sync::Mutex<Vec<CertificateDer<'static>>>>;

/// Client configuration for redeeming an enrolment code: the cloud's
/// certificate is accepted when, and only when, its public key has the
/// code's `pin` (the code reached the edge from the operator, out of band:
/// it is the trust; names and CAs are not checked). The chain presented is
/// kept, so the edge can choose its long-term trust before it sends the
/// secret ([`chain_verifies`]).
pub fn enrolment_client_config(pin: [u8; 32]) -> (Arc<rustls::ClientConfig>, PresentedChain) {
    let presented = PresentedChain::default();
    let verifier = PinOnly { pin, provider: provider(), presented: Arc::clone(&presented) };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (Arc::new(config), presented)
}

/// Whether `chain` (leaf first) verifies for `server_name` with `trust`'s
/// roots and the certificates `extra` (pins are not applied): what a later
/// `relay-edge --config` with that trust will accept.
///
/// # Errors
/// Why not, as text; [`TlsError`] cases (an unreadable `ca_file`) too.
pub fn chain_verifies(
    trust: ClientTrust<'_>,
    extra: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    server_name: &str,
) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("the cloud presented no certificate".into());
    };
    let verifier = webpki_verifier(trust, extra).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// See [`enrolment_client_config`].
#[derive(Debug)]
struct PinOnly {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    presented: PresentedChain,
}

impl ServerCertVerifier for PinOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = key_pin(end_entity)?;
        if digest != self.pin {
            let shown = shown_pin(digest);
            return Err(rustls::Error::General(format!(
                "the cloud's public key (pin_sha256 \"{shown}\") is not the one the enrolment \
                 code names: a different cloud, or a man in the middle; the code was not sent"
            )));
        }
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM file holding one self-signed certificate, and its DER.
    fn self_signed(dir: &Path) -> (std::path::PathBuf, CertificateDer<'static>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.cert.pem()).unwrap();
        (path, cert.cert.der().clone())
    }

    #[test]
    fn a_ca_file_is_the_only_trust_unless_public_roots_are_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = self_signed(dir.path());
        let only_ca = root_store(Some(&ca), &[]).unwrap();
        assert_eq!(only_ca.len(), 1, "ca_file alone must trust exactly its certificate");
        let both = root_store(Some(&ca), webpki_roots::TLS_SERVER_ROOTS).unwrap();
        assert_eq!(both.len(), 1 + webpki_roots::TLS_SERVER_ROOTS.len());
        let public = root_store(None, webpki_roots::TLS_SERVER_ROOTS).unwrap();
        assert_eq!(public.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        let trust = ClientTrust { ca_file: None, public_roots: false, pin_sha256: &[] };
        let err = client_config(trust).unwrap_err();
        assert!(err.reason.contains("no trust roots"), "{err}");
    }

    #[test]
    fn the_pin_is_the_digest_of_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, der) = self_signed(dir.path());
        let parsed = webpki::EndEntityCert::try_from(&der).unwrap();
        let spki = parsed.subject_public_key_info();
        let expected = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
        assert_eq!(spki_sha256(&der).unwrap().as_slice(), expected.as_ref());
        // A SubjectPublicKeyInfo is a DER SEQUENCE.
        assert_eq!(spki.as_ref()[0], 0x30);
        let pin = pin_of_cert_file(&ca).unwrap();
        assert_eq!(pin.len(), 44);
        assert!(spki_sha256(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
