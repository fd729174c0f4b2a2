//! rustls configuration from PEM files, with the ring crypto provider.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

/// Client configuration for the edge: the public web roots, plus the
/// certificates in `extra_ca` when given (for a private CA or a
/// self-signed cloud certificate).
///
/// # Errors
/// [`TlsError`] if `extra_ca` cannot be read or holds no usable certificate.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| err(path, format!("unusable CA certificate: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { path: String::new(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
