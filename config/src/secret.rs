//! [`Secret`] and the `token` / `token_file` rules shared by `[[edges]]` in
//! the cloud config and the edge config.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use crate::defaults::MIN_TOKEN_LEN;
use crate::error::{ConfigError, Doc};
use crate::reach::Reach;

/// Placeholders copied from examples, refused case-insensitively as the
/// whole token.
const PLACEHOLDERS: &[&str] =
    &["changeme", "change-me", "change_me", "secret", "token", "password"];

/// Placeholders so distinctive that they are refused anywhere in a token
/// ("CHANGEME-to-something-long"). Generic words such as "token" are not:
/// `e2e-test-token-...` is a fine token.
const PLACEHOLDER_PARTS: &[&str] = &["changeme", "change-me", "change_me"];

/// How to make a real token, quoted in every token error.
pub(crate) const GENERATE_HINT: &str = "generate one with `head -c 32 /dev/urandom | base64`";

/// The tokens shipped in `examples/` (`edge-demo.token`, `admin-demo.token`):
/// public, so accepted only where the token is used on loopback.
const DEMO_TOKENS: &[&[u8]] = &[
    b"j0L/pYlcuxgFkkPQW+AiMmFuJ2e3TVneB6eWEvhe3oM",
    b"70nGwk4q27BT0YXkaJQTbKUaJJSs0kXjvkOFzCkeilI",
];

/// Whether `token` is one of the repository's published demo tokens, which
/// a config refuses wherever the token is used beyond loopback.
pub fn is_demo_token(token: &[u8]) -> bool {
    DEMO_TOKENS.contains(&token)
}

/// Permission bits that let group or others at a file holding a secret,
/// as ssh checks for private keys.
pub(crate) const OPEN_BITS: u32 = 0o077;

/// How to make a secret file private, quoted in every permission message.
const PRIVATE_HINT: &str = "make it private to the agent's user (`chmod 600`), or, under systemd, \
                            pass it with LoadCredential= (see deploy/)";

/// A shared token. [`Debug`](fmt::Debug) and [`Display`](fmt::Display) print
/// `****`, so configs can be logged; [`expose`](Secret::expose) gives the
/// bytes to the code that computes handshake proofs.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps token bytes (no validation: that happens when a config loads).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The token bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// The key names of an edge token: `token` and `token_file`.
pub(crate) const EDGE_TOKEN_KEYS: (&str, &str) = ("token", "token_file");
/// The key names of the control API's admin token.
pub(crate) const ADMIN_TOKEN_KEYS: (&str, &str) = ("admin_token", "admin_token_file");

/// The inline and file keys of one token in one table, as written.
#[derive(Debug)]
pub(crate) struct TokenKeys<'a> {
    /// Dotted path of the table (`edges[0]`), empty at the top level.
    pub(crate) table: &'a str,
    /// Span of the table, for "neither key set"; `0..0` for the top level.
    pub(crate) table_span: Range<usize>,
    /// The names of the inline and file keys: [`EDGE_TOKEN_KEYS`] or
    /// [`ADMIN_TOKEN_KEYS`].
    pub(crate) names: (&'static str, &'static str),
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) token_file: Option<Spanned<PathBuf>>,
    /// Where the token is used: a demo token, or a secret in a file open to
    /// other users, is refused beyond loopback and warned about on it.
    pub(crate) reach: &'a Reach,
}

impl TokenKeys<'_> {
    /// Reads the token from exactly one of the inline or file key and
    /// checks it; problems accepted on loopback are pushed on `warnings`.
    pub(crate) fn resolve(
        self,
        doc: &Doc<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Secret, ConfigError> {
        let key = |k: &str| {
            if self.table.is_empty() { k.to_owned() } else { format!("{}.{k}", self.table) }
        };
        let (inline, in_file) = self.names;
        match (self.token, self.token_file) {
            (Some(_), Some(file)) => Err(doc.error_at(
                file.span(),
                format!("{}: set either `{inline}` or `{in_file}`, not both", key(in_file)),
            )),
            (None, None) => {
                let prefix =
                    if self.table.is_empty() { String::new() } else { format!("{}: ", self.table) };
                Err(doc.error_at(
                    self.table_span,
                    format!("{prefix}missing `{inline}` or `{in_file}`; {GENERATE_HINT}"),
                ))
            }
            (Some(token), None) => {
                let bytes = token.get_ref().as_bytes();
                let at = |m: String| doc.error_at(token.span(), format!("{}: {m}", key(inline)));
                check(bytes, "the token").map_err(at)?;
                check_demo(bytes, self.reach).map_err(at)?;
                if let Some(mode) = doc.mode.filter(|m| m & OPEN_BITS != 0) {
                    let what = format!(
                        "the config file {:?} holds this token inline and is open to group or \
                         others (mode {:04o}); {PRIVATE_HINT}, or move the token to a private \
                         `{in_file}`",
                        doc.origin.display(),
                        mode & 0o7777
                    );
                    warnings.push(at(exposed(what, self.reach).map_err(at)?).to_string());
                }
                Ok(Secret::new(bytes))
            }
            (None, Some(file)) => {
                let path = doc.resolve(file.get_ref());
                let at = |m: String| doc.error_at(file.span(), format!("{}: {m}", key(in_file)));
                let mut bytes = std::fs::read(&path)
                    .map_err(|e| at(format!("cannot read token file {:?}: {e}", path.display())))?;
                token_file_key(&mut bytes);
                check(&bytes, &format!("the token in {:?}", path.display())).map_err(at)?;
                check_demo(&bytes, self.reach).map_err(at)?;
                if let Some(mode) = file_mode(&path).filter(|m| m & OPEN_BITS != 0) {
                    let what = format!(
                        "token file {:?} is open to group or others (mode {:04o}); {PRIVATE_HINT}",
                        path.display(),
                        mode & 0o7777
                    );
                    warnings.push(at(exposed(what, self.reach).map_err(at)?).to_string());
                }
                Ok(Secret::new(bytes))
            }
        }
    }
}

/// Refuses a demo token used beyond loopback.
fn check_demo(token: &[u8], reach: &Reach) -> Result<(), String> {
    match reach.beyond() {
        Some(why) if is_demo_token(token) => Err(format!(
            "this is the repository's demo token from examples/, which anyone can read: it is \
             accepted on loopback only, and {why}; {GENERATE_HINT}"
        )),
        _ => Ok(()),
    }
}

/// A secret open to other local users: refused beyond loopback; on
/// loopback the message comes back as a warning.
fn exposed(what: String, reach: &Reach) -> Result<String, String> {
    match reach.beyond() {
        Some(why) => Err(format!("{what} (accepted on loopback only, and {why})")),
        None => Ok(format!("{what} (accepted because it is used on loopback only)")),
    }
}

/// Checks a file whose secrecy or integrity the tunnel relies on (a TLS
/// private key, a CA file): if its mode has any of `others_may_not` (the
/// group and other bits that must be clear), it is refused beyond loopback
/// and warned about on it. `what` names the file ("private key file"),
/// `hint` says how to fix it. A file that cannot be read passes: the agent
/// reports that when it loads the file.
#[allow(clippy::too_many_arguments)] // one call per kind of file; a struct would only rename them
pub(crate) fn guard_file(
    doc: &Doc<'_>,
    (key, span): (&str, Range<usize>),
    path: &std::path::Path,
    others_may_not: u32,
    what: &str,
    hint: &str,
    reach: &Reach,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let Some(mode) = file_mode(path).filter(|m| m & others_may_not != 0) else {
        return Ok(());
    };
    let access = if others_may_not & 0o044 != 0 { "open to" } else { "writable by" };
    let problem = format!(
        "{what} {:?} is {access} group or others (mode {:04o}); {hint}",
        path.display(),
        mode & 0o7777
    );
    let at = |m: String| doc.error_at(span.clone(), format!("{key}: {m}"));
    warnings.push(at(exposed(problem, reach).map_err(at)?).to_string());
    Ok(())
}

/// How to make a secret file private, for [`guard_file`].
pub(crate) const PRIVATE_FILE_HINT: &str = PRIVATE_HINT;

/// The permission bits of `path` (following symlinks), where the platform
/// has them.
pub(crate) fn file_mode(path: &std::path::Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).ok().map(|m| m.permissions().mode())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Rejects empty, placeholder and short tokens. `what` names the token in
/// the message; the token itself is never quoted.
fn check(token: &[u8], what: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!("{what} is empty; {GENERATE_HINT}"));
    }
    let lower = String::from_utf8_lossy(token).trim().to_lowercase();
    if PLACEHOLDERS.contains(&lower.as_str()) {
        return Err(format!("{what} is the placeholder {lower:?}; {GENERATE_HINT}"));
    }
    if let Some(word) = PLACEHOLDER_PARTS.iter().find(|w| lower.contains(*w)) {
        return Err(format!(
            "{what} looks like a placeholder (contains {word:?}); {GENERATE_HINT}"
        ));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{what} is {} bytes, expected at least {MIN_TOKEN_LEN}; {GENERATE_HINT}",
            token.len()
        ));
    }
    Ok(())
}

/// The HMAC key a token file holds: its bytes with trailing ASCII whitespace
/// removed (so a trailing newline does not matter), nothing else changed and
/// nothing decoded (docs/protocol.md, "Handshake").
fn token_file_key(bytes: &mut Vec<u8>) {
    bytes.truncate(bytes.trim_ascii_end().len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_loses_trailing_ascii_whitespace_only() {
        let mut bytes = " q7Zx3VbN8mK2pL9w\u{a0}\r\n\t \x0c".as_bytes().to_vec();
        token_file_key(&mut bytes);
        // Leading space and the no-break space (not ASCII) stay.
        assert_eq!(bytes, " q7Zx3VbN8mK2pL9w\u{a0}".as_bytes());
        let mut base64_like = b"cTdaeDNWYk44bUsycEw5dw==\n".to_vec();
        token_file_key(&mut base64_like);
        assert_eq!(base64_like, b"cTdaeDNWYk44bUsycEw5dw==", "not decoded");
    }

    const TOKEN: &str = "q7Zx3VbN8mK2pL9wR4tY6uI1oA5sD0fG";

    #[test]
    fn debug_and_display_mask_the_token() {
        let s = Secret::new(TOKEN);
        assert_eq!(format!("{s:?}"), "****");
        assert_eq!(format!("{s}"), "****");
        assert!(!format!("{:?}", Some(&s)).contains(TOKEN));
        assert_eq!(s.expose(), TOKEN.as_bytes());
    }

    #[test]
    fn token_rules() {
        assert!(check(TOKEN.as_bytes(), "token").is_ok());
        assert!(check(b"", "token").unwrap_err().contains("is empty"));
        assert!(check(b"0123456789abcde", "token").unwrap_err().contains("is 15 bytes"));
        assert!(check(b"0123456789abcdef", "token").is_ok());
        for p in ["CHANGEME", "Secret", " token\n", "PassWord", "change-me-please-now-1234"] {
            let err = check(p.as_bytes(), "token").unwrap_err();
            assert!(err.contains("placeholder") && err.contains("/dev/urandom"), "{p}: {err}");
        }
        // Generic words inside a long token are fine.
        assert!(check(b"e2e-test-token-0123456789abcdef-XYZ", "token").is_ok());
        assert!(check(b"my-edge-secret-9f8e7d6c5b4a", "token").is_ok());
    }
}
