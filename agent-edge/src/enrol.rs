//! `relay-edge enroll`: redeems a one-time enrolment code and writes a
//! ready `edge.toml` and token file (docs/protocol.md, "Enrolment").
//!
//! Everything that can fail without the cloud is checked before the code
//! is sent (it works once): the code's form, the URL, the allowlist, the
//! directory. Over TLS the cloud must show the public key the code names
//! before the secret leaves this machine, and the trust the written config
//! will use (public roots, the cloud's own CA, or `--ca-file`) must verify
//! the chain the cloud showed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::CloudUrl;
use proto::{EnrolmentCode, Frame, PROTOCOL_VERSION, RefuseCode};
use rustls::pki_types::{CertificateDer, ServerName};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tunnel::tls::ClientTrust;
use tunnel::untrusted::escaped;
use tunnel::wire;
use tunnel::ws;

/// Each network step must finish within this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Names of what enrolment writes into the directory.
pub const CONFIG_FILE: &str = "edge.toml";
const TOKEN_FILE: &str = "token";
const CA_FILE: &str = "cloud-ca.pem";

/// What `relay-edge enroll` was asked to do.
#[derive(Debug, Clone)]
pub struct EnrolRequest {
    /// The cloud's tunnel URL (`wss://host:port/tunnel`).
    pub cloud: String,
    /// The code `relayctl edges enroll` printed.
    pub code: String,
    /// Where to write `edge.toml`, `token` and maybe `cloud-ca.pem`.
    pub dir: PathBuf,
    /// Destinations to allow (`host:port`, `net/len:port`); may be empty.
    pub allow: Vec<String>,
    /// Trust roots for the cloud's certificate, instead of choosing.
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `ws://` cloud beyond loopback.
    pub allow_plaintext: bool,
    /// Replace files that exist.
    pub force: bool,
}

/// What enrolment wrote.
#[derive(Debug)]
pub struct Enrolled {
    pub edge_id: String,
    pub config_file: PathBuf,
    pub token_file: PathBuf,
    /// How the written config trusts the cloud, in words.
    pub trust: String,
}

/// Why enrolment failed; `code_used` says whether the code is spent.
#[derive(Debug, Error)]
pub enum EnrolError {
    /// Found before anything was sent: the code is still good.
    #[error("{0} (the code was not sent and still works)")]
    Before(String),
    /// The cloud refused the code.
    #[error("the cloud refused the code ({code:?}): {message}")]
    Refused { code: RefuseCode, message: String },
    /// The code was redeemed, but writing the files failed.
    #[error("{0}")]
    After(String),
    /// The connection failed after the code was sent; whether the cloud
    /// redeemed it is unknown.
    #[error("{0} (the code may have been used: check `relayctl edges list` on the cloud)")]
    Unknown(String),
}

fn before(e: impl std::fmt::Display) -> EnrolError {
    EnrolError::Before(e.to_string())
}

async fn step<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} timed out after {STEP_TIMEOUT:?}")),
    }
}

/// Redeems the code and writes the edge's files.
///
/// # Errors
/// [`EnrolError`], saying whether the code is still good.
pub async fn enrol(request: &EnrolRequest) -> Result<Enrolled, EnrolError> {
    let code = EnrolmentCode::parse(&request.code).map_err(before)?;
    let url: CloudUrl =
        request.cloud.parse().map_err(|e| before(format!("--cloud {:?}: {e}", request.cloud)))?;
    match (url.tls, code.pin.is_some()) {
        (false, true) => {
            return Err(before(format!(
                "the code names the cloud's TLS key, but --cloud {url} is plain ws://: use the \
                 wss:// URL the enrolment command shows"
            )));
        }
        (true, false) if request.ca_file.is_none() => {
            return Err(before(format!(
                "the code has no pin (it was made by a cloud without TLS), so nothing checks \
                 the identity of {url}; pass --ca-file with the cloud's CA certificate"
            )));
        }
        _ => {}
    }
    let dir = prepare_dir(&request.dir, request.force).map_err(before)?;
    let ca_file = match &request.ca_file {
        Some(path) => Some(std::path::absolute(path).map_err(before)?),
        None => None,
    };
    // The allowlist and URL rules are the config's: check them now, with
    // a stand-in token, so a bad `--allow` does not cost the code.
    let stand_in = random_hex(32).map_err(before)?;
    let draft = |trust: &Trust, token: TokenLine<'_>| {
        config_text(&url, "stand-in-id", token, trust, &request.allow, request.allow_plaintext)
    };
    let check_trust = Trust::for_check(ca_file.as_deref(), url.tls);
    config::EdgeConfig::from_toml(
        &draft(&check_trust, TokenLine::Inline(&stand_in)),
        &dir.join(CONFIG_FILE),
    )
    .map_err(|e| before(format!("the edge config would be invalid: {e}")))?;

    let target = (url.host.as_str(), url.port);
    let tcp = step("TCP connect", TcpStream::connect(target)).await.map_err(before)?;
    let _ = tcp.set_nodelay(true);
    let (frame, trust) = if url.tls {
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| before(format!("bad TLS server name: {e}")))?;
        let (tls, presented, pinned) = match code.pin {
            Some(pin) => {
                let (tls, presented) = tunnel::tls::enrolment_client_config(pin);
                (tls, Some(presented), true)
            }
            None => {
                let trust = ClientTrust {
                    ca_file: ca_file.as_deref(),
                    public_roots: false,
                    pin_sha256: &[],
                };
                (tunnel::tls::client_config(trust).map_err(before)?, None, false)
            }
        };
        let connector = tokio_rustls::TlsConnector::from(tls);
        let stream = step("TLS", connector.connect(name, tcp)).await.map_err(before)?;
        let trust = match presented {
            Some(presented) if pinned => {
                let chain = presented.lock().unwrap_or_else(|p| p.into_inner()).clone();
                choose_trust(&chain, &url.host, ca_file.as_deref()).map_err(before)?
            }
            _ => Trust::CaFile(ca_file.clone().unwrap_or_default()),
        };
        (redeem(stream, &url, &code).await?, trust)
    } else {
        (redeem(tcp, &url, &code).await?, Trust::Plain)
    };
    let (edge_id, token) = match frame {
        Frame::Enrolled { edge_id, token } => (edge_id, token),
        Frame::Refuse { code, message } => {
            return Err(EnrolError::Refused { code, message: escaped(message).to_string() });
        }
        other => {
            return Err(EnrolError::Unknown(format!(
                "the cloud answered with an unexpected frame: {other:?}"
            )));
        }
    };
    config::check_id("edge_id", &edge_id)
        .map_err(|e| EnrolError::After(format!("the cloud sent a bad edge id: {e}")))?;
    write_files(&dir, &url, &edge_id, &token, &trust, request)
}

/// The handshake's enrolment branch: read the challenge, send `Enroll`,
/// read the answer.
async fn redeem<S>(stream: S, url: &CloudUrl, code: &EnrolmentCode) -> Result<Frame, EnrolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = ws::max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD);
    let mut conn =
        step("WebSocket upgrade", ws::client_upgrade(stream, &url.host, url.port, &url.path, max))
            .await
            .map_err(before)?;
    let challenge = wire::recv_frame(&mut conn, STEP_TIMEOUT)
        .await
        .map_err(|e| before(format!("no challenge from the cloud: {e}")))?;
    let Frame::Challenge { max_version, .. } = challenge else {
        return Err(before(format!("the cloud did not start the handshake: {challenge:?}")));
    };
    if max_version < proto::ENROL_VERSION {
        return Err(before(format!(
            "the cloud speaks protocol version {max_version} at most; enrolment needs {} \
             (upgrade relay-cloud, or add the edge by hand)",
            proto::ENROL_VERSION
        )));
    }
    let hostname = tunnel::service::hostname().unwrap_or_default();
    let enroll = Frame::Enroll {
        version: max_version.min(PROTOCOL_VERSION),
        secret: code.secret,
        hostname,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    wire::send_frame(&mut conn, &enroll)
        .await
        .map_err(|e| EnrolError::Unknown(format!("sending the code failed: {e}")))?;
    wire::recv_frame(&mut conn, STEP_TIMEOUT)
        .await
        .map_err(|e| EnrolError::Unknown(format!("no answer from the cloud: {e}")))
}

/// How the written config trusts the cloud.
#[derive(Debug, Clone)]
enum Trust {
    /// The built-in public roots verify it.
    PublicRoots,
    /// A CA file: `--ca-file`, or the cloud's own `cloud-ca.pem`.
    CaFile(PathBuf),
    /// The last certificate the cloud presented, to write as `cloud-ca.pem`.
    Presented(CertificateDer<'static>),
    /// `ws://`: nothing to trust.
    Plain,
}

impl Trust {
    /// A trust of the right shape for checking the config before dialling.
    fn for_check(ca_file: Option<&Path>, tls: bool) -> Self {
        match (ca_file, tls) {
            (_, false) => Self::Plain,
            (Some(path), true) => Self::CaFile(path.to_owned()),
            (None, true) => Self::PublicRoots,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::PublicRoots => "the public web roots (the cloud's certificate is publicly \
                                  trusted)"
                .into(),
            Self::CaFile(path) => format!("the CA in {}", path.display()),
            Self::Presented(_) => {
                format!("{CA_FILE}, the CA the cloud presented (its key matched the code's pin)")
            }
            Self::Plain => "none: plain ws://".into(),
        }
    }
}

/// The long-term trust for a chain whose key matched the pin: what the
/// operator named, else the public roots if they verify it, else the last
/// certificate presented (the cloud's CA, or its self-signed certificate).
fn choose_trust(
    chain: &[CertificateDer<'static>],
    host: &str,
    ca_file: Option<&Path>,
) -> Result<Trust, String> {
    if let Some(path) = ca_file {
        let trust = ClientTrust { ca_file: Some(path), public_roots: false, pin_sha256: &[] };
        tunnel::tls::chain_verifies(trust, &[], chain, host).map_err(|e| {
            format!("--ca-file {} does not verify the cloud's certificate: {e}", path.display())
        })?;
        return Ok(Trust::CaFile(path.to_owned()));
    }
    let public = ClientTrust { ca_file: None, public_roots: true, pin_sha256: &[] };
    if tunnel::tls::chain_verifies(public, &[], chain, host).is_ok() {
        return Ok(Trust::PublicRoots);
    }
    let last = chain.last().ok_or("the cloud presented no certificate")?;
    let none = ClientTrust { ca_file: None, public_roots: false, pin_sha256: &[] };
    tunnel::tls::chain_verifies(none, std::slice::from_ref(last), chain, host).map_err(|e| {
        // `openssl req -x509` makes such certificates by default.
        let hint = if e.contains("CaUsedAsEndEntity") {
            "; the cloud's own certificate is a CA certificate (basicConstraints CA:TRUE), which \
             TLS clients refuse as a server's: give it one with CA:FALSE, e.g. `openssl req \
             -x509 ... -addext basicConstraints=critical,CA:FALSE`"
        } else {
            ""
        };
        format!(
            "the cloud's certificate chain verifies neither against the public roots nor \
             against its last certificate ({e}){hint}; or pass --ca-file with the cloud's CA \
             certificate"
        )
    })?;
    Ok(Trust::Presented(last.clone()))
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| "the system random source failed".to_owned())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Creates `dir` (0700) if needed; refuses to overwrite without `force`.
fn prepare_dir(dir: &Path, force: bool) -> Result<PathBuf, String> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
    if !force {
        for name in [CONFIG_FILE, TOKEN_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(format!(
                    "{} exists: enrolling again would replace this edge's identity; pass \
                     --force, or choose another --dir",
                    path.display()
                ));
            }
        }
    }
    Ok(dir)
}

use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::fs::OpenOptionsExt as _;

/// How `edge.toml` names the token.
enum TokenLine<'a> {
    Inline(&'a str),
    File(&'a str),
}

fn config_text(
    url: &CloudUrl,
    edge_id: &str,
    token: TokenLine<'_>,
    trust: &Trust,
    allow: &[String],
    allow_plaintext: bool,
) -> String {
    let quote = |s: &str| toml_string(s);
    let mut out = String::new();
    let _ = writeln!(out, "# Written by `relay-edge enroll` for edge {}.", quote(edge_id));
    let _ = writeln!(out, "# Check with `relay-edge --config edge.toml --check`.");
    let _ = writeln!(out, "cloud_url = {}", quote(&url.to_string()));
    let _ = writeln!(out, "edge_id = {}", quote(edge_id));
    match token {
        TokenLine::Inline(t) => {
            let _ = writeln!(out, "token = {}", quote(t));
        }
        TokenLine::File(name) => {
            let _ = writeln!(out, "# This edge's own token, made by the cloud at enrolment.");
            let _ = writeln!(out, "token_file = {}", quote(name));
        }
    }
    if allow_plaintext {
        let _ = writeln!(out, "allow_plaintext = true");
    }
    match trust {
        Trust::PublicRoots | Trust::Plain => {}
        Trust::CaFile(path) => {
            let _ = writeln!(out, "ca_file = {}", quote(&path.display().to_string()));
        }
        Trust::Presented(_) => {
            let _ = writeln!(out, "# The CA the cloud presented at enrolment (its key matched");
            let _ = writeln!(out, "# the code's pin). Add pin_sha256 to also pin the key.");
            let _ = writeln!(out, "ca_file = {}", quote(CA_FILE));
        }
    }
    let _ = writeln!(out, "# The destinations this edge may connect to. The cloud cannot");
    let _ =
        writeln!(out, "# choose them: add each service here (\"10.0.0.5:22\", \"db.lan:5432\",");
    let _ =
        writeln!(out, "# \"10.0.0.0/24:443\"), then `systemctl reload relay-edge` (or kill -HUP).");
    let entries: Vec<String> = allow.iter().map(|a| quote(a)).collect();
    let _ = writeln!(out, "allow = [{}]", entries.join(", "));
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_files(
    dir: &Path,
    url: &CloudUrl,
    edge_id: &str,
    token: &str,
    trust: &Trust,
    request: &EnrolRequest,
) -> Result<Enrolled, EnrolError> {
    let after = |what: &str, path: &Path, e: std::io::Error| {
        EnrolError::After(format!(
            "enrolled as edge {edge_id}, but writing {what} {} failed: {e}; the code is used \
             up: make a new one",
            path.display()
        ))
    };
    let token_file = dir.join(TOKEN_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if request.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(&token_file).map_err(|e| after("the token", &token_file, e))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| after("the token", &token_file, e))?;
    // An existing file kept its mode through `truncate`.
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| after("the token", &token_file, e))?;
    if let Trust::Presented(cert) = trust {
        let path = dir.join(CA_FILE);
        std::fs::write(&path, pem(cert)).map_err(|e| after("the CA", &path, e))?;
    }
    let config_file = dir.join(CONFIG_FILE);
    let text = config_text(
        url,
        edge_id,
        TokenLine::File(TOKEN_FILE),
        trust,
        &request.allow,
        request.allow_plaintext,
    );
    std::fs::write(&config_file, text).map_err(|e| after("the config", &config_file, e))?;
    // What was written must load as it will at start.
    config::EdgeConfig::load(&config_file).map_err(|e| {
        EnrolError::After(format!(
            "enrolled as edge {edge_id}, but the written config does not load: {e}"
        ))
    })?;
    Ok(Enrolled { edge_id: edge_id.to_owned(), config_file, token_file, trust: trust.describe() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_loads_and_quotes_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), format!("{}\n", "a".repeat(64))).unwrap();
        std::fs::set_permissions(
            dir.path().join(TOKEN_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let url: CloudUrl = "ws://127.0.0.1:7000/tunnel".parse().unwrap();
        let allow = vec!["127.0.0.1:22".to_owned(), "10.0.0.0/24:443".to_owned()];
        let text =
            config_text(&url, "site-a", TokenLine::File(TOKEN_FILE), &Trust::Plain, &allow, false);
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, &text).unwrap();
        let config = config::EdgeConfig::load(&path).unwrap();
        assert_eq!(config.edge_id, "site-a");
        assert_eq!(config.allow.len(), 2);
        assert_eq!(toml_string("a\"b\\c\n"), r#""a\"b\\c\u000A""#);
        let empty =
            config_text(&url, "e", TokenLine::Inline(&"b".repeat(64)), &Trust::Plain, &[], false);
        assert!(empty.contains("allow = []") && empty.contains("add each service here"));
    }

    #[test]
    fn an_existing_identity_is_not_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("new/edge");
        assert!(prepare_dir(&sub, false).is_ok(), "created");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sub).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(sub.join(CONFIG_FILE), "").unwrap();
        assert!(prepare_dir(&sub, false).unwrap_err().contains("--force"));
        assert!(prepare_dir(&sub, true).is_ok());
    }
}
