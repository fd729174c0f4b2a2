//! A mapping's traffic policy: caps per client address and byte rates for
//! the whole mapping, enforced by the cloud ([`TrafficPolicy`]).

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Lowest byte rate: below it one grant of the limiter (16 KiB) would be
/// more than a second's worth.
pub const MIN_RATE: u64 = 16 * 1024;
/// Highest byte rate.
pub const MAX_RATE: u64 = 1 << 40;

/// What a mapping allows each client, and the whole mapping, at the cloud.
/// A client is an IPv4 address, or an IPv6 /64 (one host commonly holds a
/// whole /64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    /// `max_connections_per_client`: concurrent connections one client may
    /// hold.
    pub max_connections_per_client: Option<u32>,
    /// `new_connections_per_client`: new connections one client may open
    /// per second (a token bucket holding one second's worth).
    pub new_connections_per_client: Option<u32>,
    /// `rate_limit_in`: bytes per second from all clients towards the
    /// service, together.
    pub rate_limit_in: Option<u64>,
    /// `rate_limit_out`: bytes per second from the service to all clients,
    /// together.
    pub rate_limit_out: Option<u64>,
}

impl TrafficPolicy {
    /// Whether anything is limited.
    pub fn is_empty(&self) -> bool {
        *self == TrafficPolicy::default()
    }

    /// Checks the values: counts at least 1, rates within
    /// [`MIN_RATE`]..=[`MAX_RATE`]. Returns the field at fault and why.
    ///
    /// # Errors
    /// `(field, message)`, the field as the config file names it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [
            ("max_connections_per_client", self.max_connections_per_client),
            ("new_connections_per_client", self.new_connections_per_client),
        ] {
            if v == Some(0) {
                return Err((field, "must be at least 1 (leave it out for no limit)".into()));
            }
        }
        for (field, v) in
            [("rate_limit_in", self.rate_limit_in), ("rate_limit_out", self.rate_limit_out)]
        {
            if let Some(v) = v {
                if !(MIN_RATE..=MAX_RATE).contains(&v) {
                    return Err((
                        field,
                        format!("{} is out of range, expected 16KiB to 1TiB per second", rate(v)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `max_connections_per_client 8, rate_limit_out 10 MiB/s`, or `no limits`.
impl std::fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.max_connections_per_client {
            parts.push(format!("max_connections_per_client {n}"));
        }
        if let Some(n) = self.new_connections_per_client {
            parts.push(format!("new_connections_per_client {n}/s"));
        }
        if let Some(r) = self.rate_limit_in {
            parts.push(format!("rate_limit_in {}", rate(r)));
        }
        if let Some(r) = self.rate_limit_out {
            parts.push(format!("rate_limit_out {}", rate(r)));
        }
        if parts.is_empty() { f.write_str("no limits") } else { f.write_str(&parts.join(", ")) }
    }
}

/// A rate as people write it: `"10MiB"`, `"10 MiB/s"`, `"500kB"`, `"1GB/s"`,
/// or a plain number of bytes. Units: B, kB/MB/GB (powers of 1000),
/// KiB/MiB/GiB (powers of 1024).
///
/// # Errors
/// A message quoting the value and what is expected.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid rate {s:?}: expected bytes per second such as \"10MiB\", \"500kB/s\" or \
             \"1048576\""
        )
    };
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > MAX_RATE as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A rate for people: `10 MiB/s`, `500 kB/s`, `123 B/s`.
pub fn rate(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB/s", b / MIB),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB/s", b / 1024),
        b if b >= 1_000_000 && b % 1_000_000 == 0 => format!("{} MB/s", b / 1_000_000),
        b if b >= 1000 && b % 1000 == 0 => format!("{} kB/s", b / 1000),
        b => format!("{b} B/s"),
    }
}

/// A rate in a config file: a string with units, or an integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate(pub(crate) u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(b) => Ok(Rate(b)),
            Raw::Text(t) => parse_rate(&t).map(Rate).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_units_and_print_back() {
        assert_eq!(parse_rate("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_rate("10 MiB/s"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_rate("500kB/s"), Ok(500_000));
        assert_eq!(parse_rate("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_rate("65536"), Ok(65536));
        for bad in ["", "fast", "10 mb", "-1MiB", "10MiB/h", "0"] {
            assert!(parse_rate(bad).unwrap_err().starts_with("invalid rate"), "{bad}");
        }
        assert_eq!(rate(10 * 1024 * 1024), "10 MiB/s");
        assert_eq!(rate(500_000), "500 kB/s");
        assert_eq!(rate(1234), "1234 B/s");
    }

    #[test]
    fn a_policy_checks_its_counts_and_rates() {
        assert_eq!(TrafficPolicy::default().check(), Ok(()));
        let zero = TrafficPolicy { max_connections_per_client: Some(0), ..Default::default() };
        assert_eq!(zero.check().unwrap_err().0, "max_connections_per_client");
        let slow = TrafficPolicy { rate_limit_out: Some(1000), ..Default::default() };
        let (field, why) = slow.check().unwrap_err();
        assert_eq!(field, "rate_limit_out");
        assert!(why.starts_with("1 kB/s is out of range"), "{why}");
    }
}
