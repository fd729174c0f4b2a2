//! `host` of a mapping: [`HostPattern`], the name a shared listen address
//! routes by (the TLS server name or the HTTP `Host`).

use std::fmt;

use serde::de::{self, Deserializer};

/// Longest host name (RFC 1035), without a trailing dot.
const MAX_HOST_LEN: usize = 253;
/// Longest label.
const MAX_LABEL_LEN: usize = 63;

/// Which names a mapping takes on a shared listen address. Names compare
/// without regard to case; a trailing dot is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `app.example.com`: that name only.
    Exact(String),
    /// `*.example.com`: any name one label below `example.com` (so
    /// `a.example.com`, not `example.com` nor `a.b.example.com`). Holds
    /// the suffix, `example.com`.
    Wildcard(String),
    /// `*`: the address's default, for a name no other mapping takes,
    /// and for connections that name none.
    Any,
}

/// How well a pattern matches a name: the best match routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Specificity {
    Any,
    Wildcard,
    Exact,
}

impl HostPattern {
    /// Whether `name` (already lowercase, without a trailing dot) matches,
    /// and how specifically.
    pub fn matches(&self, name: &str) -> Option<Specificity> {
        match self {
            HostPattern::Exact(n) => (n == name).then_some(Specificity::Exact),
            HostPattern::Wildcard(suffix) => {
                let label = name.strip_suffix(suffix.as_str())?.strip_suffix('.')?;
                (!label.is_empty() && !label.contains('.')).then_some(Specificity::Wildcard)
            }
            HostPattern::Any => Some(Specificity::Any),
        }
    }

    /// Whether this is the default (`*`).
    pub fn is_default(&self) -> bool {
        *self == HostPattern::Any
    }
}

/// A name as routing compares it: lowercase, without a trailing dot.
pub fn normalize_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Checks a DNS name: labels of letters, digits and `-` (not at either
/// end), 1 to 63 bytes each, 253 in all.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return Err(format!("must be 1 to {MAX_HOST_LEN} characters"));
    }
    for label in name.split('.') {
        let ok = (1..=MAX_LABEL_LEN).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "label {label:?} is not a DNS label (1 to {MAX_LABEL_LEN} of a-z, 0-9 and '-', \
                 not starting or ending with '-')"
            ));
        }
    }
    Ok(())
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let why = |m: String| {
            format!(
                "invalid host {s:?}: {m}; expected a name such as \"app.example.com\", a \
                 wildcard such as \"*.example.com\", or \"*\" for the address's default"
            )
        };
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let name = normalize_host(s);
        if let Some(suffix) = name.strip_prefix("*.") {
            check_dns_name(suffix).map_err(why)?;
            return Ok(HostPattern::Wildcard(suffix.to_owned()));
        }
        if name.contains('*') {
            return Err(why("a wildcard is only \"*.\" in front of a name".into()));
        }
        if name.contains(':') {
            return Err(why("no port: the listen address has it".into()));
        }
        check_dns_name(&name).map_err(why)?;
        Ok(HostPattern::Exact(name))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

impl<'de> de::Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_parse_lowercase_and_print_back() {
        assert_eq!(p("App.Example.COM."), HostPattern::Exact("app.example.com".into()));
        assert_eq!(p("*.example.com"), HostPattern::Wildcard("example.com".into()));
        assert_eq!(p("*"), HostPattern::Any);
        for s in ["app.example.com", "*.example.com", "*"] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn bad_names_are_refused_with_what_was_expected() {
        for bad in ["", "a..b", "-a.b", "a_b.c", "*.*.b", "a.*.b", "a*", "a.b:443", "*."] {
            let err = bad.parse::<HostPattern>().unwrap_err();
            assert!(err.starts_with(&format!("invalid host {bad:?}")), "{bad}: {err}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(long.parse::<HostPattern>().is_err());
    }

    #[test]
    fn a_wildcard_takes_one_label_and_exact_beats_it() {
        let w = p("*.example.com");
        assert_eq!(w.matches("a.example.com"), Some(Specificity::Wildcard));
        assert_eq!(w.matches("example.com"), None);
        assert_eq!(w.matches("a.b.example.com"), None);
        assert_eq!(w.matches("aexample.com"), None);
        assert_eq!(w.matches(".example.com"), None);
        assert_eq!(p("a.example.com").matches("a.example.com"), Some(Specificity::Exact));
        assert_eq!(p("*").matches("anything"), Some(Specificity::Any));
        assert!(
            Specificity::Exact > Specificity::Wildcard && Specificity::Wildcard > Specificity::Any
        );
    }
}
