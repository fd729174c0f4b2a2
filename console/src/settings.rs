//! Where the endpoints and the admin token come from, first match wins:
//! 1. `--endpoint URL` (repeated, or comma-separated) / `--token-file FILE`;
//! 2. `RELAYCTL_ENDPOINT` (comma-separated) / `RELAYCTL_TOKEN` (the token
//!    itself);
//! 3. the config file: `$RELAYCTL_CONFIG`, else
//!    `$XDG_CONFIG_HOME/relayctl/config.toml`, else
//!    `~/.config/relayctl/config.toml`, with keys `endpoint` (a URL, a
//!    comma-separated string of them, or a list) and `token_file`;
//! 4. the cloud agent's default control address, `http://127.0.0.1:7070`,
//!    and no token.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::cli::GlobalArgs;

/// The endpoint used when nothing says otherwise.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

/// Resolved connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// In the order to try them; never empty.
    pub(crate) endpoints: Vec<String>,
    pub(crate) token: Option<AdminToken>,
}

/// The admin token. [`Debug`](fmt::Debug) prints `****`, so settings and
/// clients can be logged or shown in a panic without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AdminToken(String);

impl AdminToken {
    /// The token text, for the `authorization` header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for AdminToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl From<&str> for AdminToken {
    fn from(token: &str) -> Self {
        Self(token.to_owned())
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    endpoint: Option<Endpoints>,
    token_file: Option<PathBuf>,
}

/// `endpoint = "http://a:7070"`, `"http://a:7070,http://b:7070"` or
/// `["http://a:7070", "http://b:7070"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Endpoints {
    One(String),
    List(Vec<String>),
}

impl Endpoints {
    fn into_vec(self) -> Vec<String> {
        match self {
            Endpoints::One(text) => split(&text),
            Endpoints::List(list) => list.iter().flat_map(|e| split(e)).collect(),
        }
    }
}

/// A comma-separated list of endpoints, blanks dropped.
fn split(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect()
}

/// A warning for a token file that group or others may read or write, as
/// ssh warns about keys; the agents refuse such files beyond loopback.
fn open_file_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "the token file {} is open to group or others (mode {:04o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn read_token(path: &Path) -> anyhow::Result<AdminToken> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    if let Some(warning) = open_file_warning(path) {
        eprintln!("relayctl: warning: {warning}");
    }
    // The agents' rule for token files: trailing ASCII whitespace only.
    let token = text.trim_ascii_end().to_owned();
    anyhow::ensure!(!token.is_empty(), "the token file {} is empty", path.display());
    Ok(AdminToken(token))
}

fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("RELAYCTL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("relayctl").join("config.toml"))
}

fn read_file_settings(path: &Path, explicit: bool) -> anyhow::Result<FileSettings> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut s: FileSettings =
                toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
            // A relative token_file is relative to the config file.
            if let (Some(file), Some(dir)) = (&s.token_file, path.parent()) {
                s.token_file = Some(dir.join(file));
            }
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileSettings::default())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Resolves the settings from the flags, the environment and the files.
///
/// # Errors
/// If a named token or config file cannot be read.
pub(crate) fn resolve(args: &GlobalArgs) -> anyhow::Result<Settings> {
    resolve_with(args, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn resolve_with(
    args: &GlobalArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Settings> {
    let file = match config_path(env) {
        Some(path) => read_file_settings(&path, env("RELAYCTL_CONFIG").is_some())?,
        None => FileSettings::default(),
    };
    let flags: Vec<String> = args.endpoint.iter().flat_map(|e| split(e)).collect();
    let endpoints = Some(flags)
        .filter(|e| !e.is_empty())
        .or_else(|| env("RELAYCTL_ENDPOINT").map(|e| split(&e)).filter(|e| !e.is_empty()))
        .or_else(|| file.endpoint.map(Endpoints::into_vec).filter(|e| !e.is_empty()))
        .unwrap_or_else(|| vec![DEFAULT_ENDPOINT.to_owned()]);
    let token = match (&args.token_file, env("RELAYCTL_TOKEN"), &file.token_file) {
        (Some(path), _, _) => Some(read_token(path)?),
        (None, Some(token), _) => Some(AdminToken(token.trim_ascii_end().to_owned())),
        (None, None, Some(path)) => Some(read_token(path)?),
        (None, None, None) => None,
    };
    Ok(Settings { endpoints, token })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cli::Output;

    fn args(endpoint: Option<&str>, token_file: Option<&Path>) -> GlobalArgs {
        GlobalArgs {
            endpoint: endpoint.map(str::to_owned).into_iter().collect(),
            verbose: false,
            token_file: token_file.map(Path::to_path_buf),
            output: Output::Table,
            json: false,
        }
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file.token"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("flag.token"), "from-flag\n").unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "endpoint = \"http://file:1\"\ntoken_file = \"file.token\"\n")
            .unwrap();
        let config_s = config.display().to_string();

        let mut vars: HashMap<&str, String> =
            HashMap::from([("RELAYCTL_CONFIG", config_s.clone())]);
        fn env_of(vars: &HashMap<&str, String>) -> impl Fn(&str) -> Option<String> + use<> {
            let vars: HashMap<String, String> =
                vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            move |k: &str| vars.get(k).cloned()
        }
        let s = resolve_with(&args(None, None), &env_of(&vars)).unwrap();
        assert_eq!(
            s,
            Settings { endpoints: vec!["http://file:1".into()], token: Some("from-file".into()) }
        );

        vars.insert("RELAYCTL_ENDPOINT", "http://env:2".into());
        vars.insert("RELAYCTL_TOKEN", "from-env".into());
        let s = resolve_with(&args(None, None), &env_of(&vars)).unwrap();
        assert_eq!(
            s,
            Settings { endpoints: vec!["http://env:2".into()], token: Some("from-env".into()) }
        );

        let flag_token = dir.path().join("flag.token");
        let s =
            resolve_with(&args(Some("http://flag:3"), Some(&flag_token)), &env_of(&vars)).unwrap();
        assert_eq!(
            s,
            Settings { endpoints: vec!["http://flag:3".into()], token: Some("from-flag".into()) }
        );

        let none = HashMap::from([("HOME", "/nonexistent-home".to_owned())]);
        let s = resolve_with(&args(None, None), &env_of(&none)).unwrap();
        assert_eq!(s, Settings { endpoints: vec![DEFAULT_ENDPOINT.into()], token: None });
    }

    #[test]
    fn several_endpoints_from_flags_environment_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let config_s = config.display().to_string();
        let ab = vec!["http://a:1".to_owned(), "http://b:2".to_owned()];
        for text in [
            "endpoint = \"http://a:1, http://b:2\"\n",
            "endpoint = [\"http://a:1\", \"http://b:2\"]\n",
        ] {
            std::fs::write(&config, text).unwrap();
            let env = |k: &str| (k == "RELAYCTL_CONFIG").then(|| config_s.clone());
            assert_eq!(resolve_with(&args(None, None), &env).unwrap().endpoints, ab, "{text}");
        }
        let env = |k: &str| match k {
            "RELAYCTL_CONFIG" => Some(config_s.clone()),
            "RELAYCTL_ENDPOINT" => Some("http://c:3,,http://d:4".to_owned()),
            _ => None,
        };
        let s = resolve_with(&args(None, None), &env).unwrap();
        assert_eq!(s.endpoints, ["http://c:3", "http://d:4"]);
        let mut flags = args(Some("http://e:5,http://f:6"), None);
        flags.endpoint.push("http://g:7".into());
        let s = resolve_with(&flags, &env).unwrap();
        assert_eq!(s.endpoints, ["http://e:5", "http://f:6", "http://g:7"]);
    }

    #[test]
    fn missing_named_files_are_errors() {
        let missing = Path::new("/nonexistent/token");
        assert!(resolve_with(&args(None, Some(missing)), &|_| None).is_err());
        let env = |k: &str| (k == "RELAYCTL_CONFIG").then(|| "/nonexistent/config.toml".to_owned());
        assert!(resolve_with(&args(None, None), &env).is_err());
    }

    #[test]
    fn debug_masks_the_token() {
        let token = "q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd";
        let s =
            Settings { endpoints: vec!["http://127.0.0.1:7070".into()], token: Some(token.into()) };
        let shown = format!("{s:?}");
        assert!(!shown.contains(token), "token in clear: {shown}");
        assert!(shown.contains("http://127.0.0.1:7070") && shown.contains("****"), "{shown}");
        let none = Settings { endpoints: vec!["http://h:1".into()], token: None };
        assert!(format!("{none:?}").contains("None"), "{none:?}");
    }

    #[cfg(unix)]
    #[test]
    fn an_open_token_file_gets_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = open_file_warning(&path).expect("a warning for mode 0644");
        assert!(warning.contains("(mode 0644)") && warning.contains("chmod 600"), "{warning}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(open_file_warning(&path), None);
    }
}
