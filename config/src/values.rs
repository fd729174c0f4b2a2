//! Private wrappers that deserialize scalar values with messages quoting the
//! bad value and saying what was expected, plus the checks shared by both
//! config files (ranges, names, non-zero durations).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use humantime_serde::re::humantime;
use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::defaults::MAX_NAME_LEN;
use crate::error::{ConfigError, Doc};

/// A duration written as a string: `"2s"`, `"500ms"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

/// A socket address `IP:port`; host names are not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr(pub(crate) SocketAddr);

/// A CIDR network, or a bare IP meaning a single host (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net(pub(crate) IpNet);

/// Implements `Deserialize` for a wrapper from a string parser.
macro_rules! from_string {
    ($ty:ident, $expecting:literal, $parse:expr) => {
        impl<'de> de::Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        let parse: fn(&str) -> Result<$ty, String> = $parse;
                        parse(v).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}

from_string!(Dur, "a duration string such as \"2s\" or \"500ms\"", |v| {
    humantime::parse_duration(v).map(Dur).map_err(|e| {
        format!("invalid duration {v:?}: {e}; expected a duration such as \"2s\", \"500ms\" or \"1m 30s\"")
    })
});

from_string!(Addr, "a socket address string such as \"0.0.0.0:8443\"", |v| parse_addr(v).map(Addr));

from_string!(Net, "a CIDR string such as \"10.0.0.0/8\"", |v| parse_net(v).map(Net));

/// Parses `IP:port`; the message quotes `v` and gives examples.
pub(crate) fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|_| {
        format!(
            "invalid socket address {v:?}: expected IP:port such as \"0.0.0.0:8443\" or \
             \"[::]:8443\" (host names are not accepted here)"
        )
    })
}

/// Parses a CIDR network or a bare IP (a single host).
pub(crate) fn parse_net(v: &str) -> Result<IpNet, String> {
    v.parse::<IpNet>().or_else(|_| v.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
        format!(
            "invalid CIDR {v:?}: expected an IP address or network such as \"10.0.0.0/8\", \
             \"192.168.1.7\" or \"fd00::/8\""
        )
    })
}

/// Checks that a count lies within `range`; the message has no key.
pub(crate) fn check_range(v: u32, range: RangeInclusive<u32>) -> Result<u32, String> {
    if range.contains(&v) {
        return Ok(v);
    }
    let expected = if *range.end() == u32::MAX {
        format!("at least {}", range.start())
    } else {
        format!("{}..={}", range.start(), range.end())
    };
    Err(format!("{v} is out of range, expected {expected}"))
}

/// Checks a name, id or file prefix: 1 to [`MAX_NAME_LEN`] characters of
/// `[A-Za-z0-9._-]`. `what` names it in the message ("name").
pub(crate) fn check_name(v: &str, what: &str) -> Result<(), String> {
    let ok_chars = v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_chars && (1..=MAX_NAME_LEN).contains(&v.len()) {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {v:?}, expected 1 to {MAX_NAME_LEN} characters of \
             A-Z, a-z, 0-9, '.', '_' or '-'"
        ))
    }
}

/// Checks that a count lies within `range`.
pub(crate) fn in_range(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<u32>,
    range: RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    check_range(*value.get_ref(), range)
        .map_err(|m| doc.error_at(value.span(), format!("{key}: {m}")))
}

/// Checks that a duration is not zero.
pub(crate) fn nonzero(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<Dur>,
) -> Result<Duration, ConfigError> {
    let v = value.get_ref().0;
    if v.is_zero() {
        let written = doc.snippet(value.span());
        Err(doc.error_at(
            value.span(),
            format!("{key}: {written} is zero, expected a positive duration"),
        ))
    } else {
        Ok(v)
    }
}

/// Checks that duration `high` is greater than (`strict`) or at least `low`,
/// both keys of the table whose prefix is `table` (`"tunnel."`). The error
/// points at `high` if it was written, else at `low`.
pub(crate) fn ordered(
    doc: &Doc<'_>,
    table: &str,
    (low_key, low): (&str, &Spanned<Dur>),
    (high_key, high): (&str, &Spanned<Dur>),
    strict: bool,
) -> Result<(), ConfigError> {
    let (l, h) = (low.get_ref().0, high.get_ref().0);
    if h > l || (!strict && h == l) {
        return Ok(());
    }
    let show = |d: Duration, span: Range<usize>| {
        let default = if span == (0..0) { ", the default" } else { "" };
        format!("{}{default}", humantime::format_duration(d))
    };
    let (key, span) =
        if high.span() != (0..0) { (high_key, high.span()) } else { (low_key, low.span()) };
    let relation = if strict { "greater than" } else { "at least" };
    Err(doc.error_at(
        span,
        format!(
            "{table}{key}: {high_key} ({}) must be {relation} {low_key} ({})",
            show(h, high.span()),
            show(l, low.span())
        ),
    ))
}

/// Checks a mapping name or an edge id with [`check_name`].
pub(crate) fn name(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<String, ConfigError> {
    check_name(value.get_ref(), "name")
        .map_err(|m| doc.error_at(value.span(), format!("{key}: {m}")))?;
    Ok(value.get_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct T {
        d: Option<Dur>,
        a: Option<Addr>,
        n: Option<Net>,
    }

    fn parse(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn durations() {
        assert_eq!(parse("d = \"500ms\"").unwrap().d, Some(Dur(Duration::from_millis(500))));
        assert_eq!(parse("d = \"1m 30s\"").unwrap().d, Some(Dur(Duration::from_secs(90))));
        let err = parse("d = \"5x\"").unwrap_err();
        assert!(err.contains("invalid duration \"5x\""), "{err}");
        let err = parse("d = 5").unwrap_err();
        assert!(err.contains("expected a duration string"), "{err}");
    }

    #[test]
    fn addresses_and_nets() {
        let a = parse("a = \"[::1]:0\"").unwrap().a.unwrap().0;
        assert_eq!(a, "[::1]:0".parse().unwrap());
        let err = parse("a = \"localhost:80\"").unwrap_err();
        assert!(err.contains("invalid socket address \"localhost:80\""), "{err}");
        let n = parse("n = \"10.0.0.1\"").unwrap().n.unwrap().0;
        assert_eq!(n.to_string(), "10.0.0.1/32");
        let n = parse("n = \"fd00::1\"").unwrap().n.unwrap().0;
        assert_eq!(n.to_string(), "fd00::1/128");
        let err = parse("n = \"10.0.0.0/33\"").unwrap_err();
        assert!(err.contains("invalid CIDR \"10.0.0.0/33\""), "{err}");
    }
}
