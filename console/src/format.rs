//! Human formatting of rates, sizes, latencies and times, and parsing of
//! the drain deadline. Pure functions: the clock is passed in.

/// Bytes per second in decimal units: `0 B/s`, `512 B/s`, `1.5 kB/s`,
/// `12.3 MB/s`, `240 MB/s`.
pub(crate) fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", decimal(bytes_per_sec))
}

/// A count with thousands separated: `1,204`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count in decimal units: `512 B`, `1.5 kB`, `3.4 GB`.
pub(crate) fn decimal(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let unit = UNITS[unit];
    if value < 99.95 { format!("{value:.1} {unit}") } else { format!("{value:.0} {unit}") }
}

/// Memory in use out of the total, in the total's binary unit:
/// `1.0/16.0 GiB`, `512/2048 MiB`.
pub(crate) fn memory(used: u64, total: u64) -> String {
    const UNITS: [(&str, u64); 4] =
        [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    let (unit, size) = UNITS.iter().copied().find(|(_, size)| total >= *size).unwrap_or(("B", 1));
    let scale = |v: u64| v as f64 / size as f64;
    if scale(total) < 100.0 {
        format!("{:.1}/{:.1} {unit}", scale(used), scale(total))
    } else {
        format!("{:.0}/{:.0} {unit}", scale(used), scale(total))
    }
}

/// A latency in microseconds: `45 µs`, `0.6 ms`, `12 ms`, `1.5 s`.
pub(crate) fn micros(us: u64) -> String {
    match us {
        0..100 => format!("{us} µs"),
        100..9_950 => format!("{:.1} ms", us as f64 / 1000.0),
        9_950..999_500 => format!("{:.0} ms", us as f64 / 1000.0),
        _ => format!("{:.1} s", us as f64 / 1_000_000.0),
    }
}

/// A duration in milliseconds, rounded up to the second: `25s`, `4m05s`,
/// `1h02m`, `3d04h`.
pub(crate) fn duration_ms(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// How long ago something happened: `now` (under 2 s), `12s ago`,
/// `3m ago`, `2h ago`, `4d ago`.
pub(crate) fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..2 => "now".to_owned(),
        2..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// The drain deadline as typed: `90s`, `5m`, `1h`, `1m30s`, or bare
/// seconds (`45`). Returns seconds.
///
/// # Errors
/// A sentence quoting the input and giving examples.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid deadline \"{text}\": expected e.g. 30s, 90s, 5m or 1h");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    check_deadline(text, total)
}

/// Refuses a drain deadline the API would refuse (more than
/// [`api::MAX_DRAIN_DEADLINE_SECS`]), so that a form or a batch line is
/// refused before anything is sent.
///
/// # Errors
/// A sentence quoting `text` and giving the limit.
pub(crate) fn check_deadline(text: &str, secs: u64) -> Result<u64, String> {
    if secs > api::MAX_DRAIN_DEADLINE_SECS {
        return Err(format!(
            "deadline \"{}\" is too long: at most 7 days ({} s)",
            text.trim(),
            api::MAX_DRAIN_DEADLINE_SECS
        ));
    }
    Ok(secs)
}

/// `text` cut to `width` characters, ending in `…` when cut.
pub(crate) fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `text` broken into lines of at most `width` characters at spaces;
/// words longer than a line are cut.
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word = word.to_owned();
        loop {
            let len = line.chars().count();
            let wlen = word.chars().count();
            if len > 0 && len + 1 + wlen <= width {
                line.push(' ');
                line.push_str(&word);
                break;
            }
            if len > 0 {
                lines.push(std::mem::take(&mut line));
            }
            if wlen <= width {
                line = word;
                break;
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// A mapping's probe in a few words: `ok 1.2ms`, `slow 640ms`, `failed:
/// refused: ...`, `no tunnel`; `-` without a probe.
pub(crate) fn probe(p: Option<&api::ProbeView>) -> String {
    use api::ProbeStatus;
    let Some(p) = p else { return "-".into() };
    let ms =
        |us: Option<u64>| us.map(|us| format!("{:.1}ms", us as f64 / 1000.0)).unwrap_or_default();
    match p.status {
        ProbeStatus::Pending => "pending".into(),
        ProbeStatus::Ok => format!("ok {}", ms(p.connect_us)),
        ProbeStatus::Slow => format!("slow {}", ms(p.connect_us)),
        ProbeStatus::Failed => format!("failed: {}", p.detail),
        ProbeStatus::NoTunnel => "no tunnel".into(),
        ProbeStatus::Unsupported => "edge too old".into(),
        ProbeStatus::Other => p.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_sizes() {
        assert_eq!(rate(0), "0 B/s");
        assert_eq!(rate(999), "999 B/s");
        assert_eq!(rate(1000), "1.0 kB/s");
        assert_eq!(rate(1_536), "1.5 kB/s");
        assert_eq!(rate(99_949), "99.9 kB/s");
        assert_eq!(rate(240_000), "240 kB/s");
        assert_eq!(rate(999_999), "1.0 MB/s");
        assert_eq!(rate(12_345_678), "12.3 MB/s");
        assert_eq!(rate(3_000_000_000), "3.0 GB/s");
        assert_eq!(decimal(u64::MAX), "18.4 EB");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_204), "1,204");
        assert_eq!(count(12_345_678), "12,345,678");
        assert_eq!(memory(1 << 30, 16 << 30), "1.0/16.0 GiB");
        assert_eq!(memory(100 << 30, 200 << 30), "100/200 GiB");
        assert_eq!(memory(300 << 20, 900 << 20), "300/900 MiB");
        assert_eq!(memory(10, 0), "10.0/0.0 B");
    }

    #[test]
    fn latencies() {
        assert_eq!(micros(0), "0 µs");
        assert_eq!(micros(45), "45 µs");
        assert_eq!(micros(600), "0.6 ms");
        assert_eq!(micros(2_100), "2.1 ms");
        assert_eq!(micros(9_960), "10 ms");
        assert_eq!(micros(120_400), "120 ms");
        assert_eq!(micros(1_500_000), "1.5 s");
    }

    #[test]
    fn durations_and_ages() {
        assert_eq!(duration_ms(0), "0s");
        assert_eq!(duration_ms(24_001), "25s");
        assert_eq!(duration_ms(25_000), "25s");
        assert_eq!(duration_ms(245_000), "4m05s");
        assert_eq!(duration_ms(3_720_000), "1h02m");
        assert_eq!(duration_ms(277_200_000), "3d05h");
        assert_eq!(age(0), "now");
        assert_eq!(age(1_999), "now");
        assert_eq!(age(12_400), "12s ago");
        assert_eq!(age(185_000), "3m ago");
        assert_eq!(age(7_300_000), "2h ago");
        assert_eq!(age(4 * 86_400_000), "4d ago");
    }

    #[test]
    fn deadlines_parse() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration(" 5m "), Ok(300));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("1m30s"), Ok(90));
        assert_eq!(parse_duration("45"), Ok(45));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in ["", "s", "5x", "5m3", "1.5m", "-1s", "99999999999999999999h"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("expected e.g. 30s"), "{bad}: {err}");
        }
        assert_eq!(parse_duration("7d"), Ok(604_800));
        let err = parse_duration("7d1s").expect_err("beyond 7 days");
        assert!(err.contains("at most 7 days"), "{err}");
    }

    #[test]
    fn wrapping() {
        assert_eq!(
            wrap("invalid host:port \"db\": missing port", 20),
            ["invalid host:port", "\"db\": missing port"]
        );
        assert_eq!(wrap("abcdefgh ij", 3), ["abc", "def", "gh", "ij"]);
        assert_eq!(wrap("", 5), [""]);
    }

    #[test]
    fn fitting() {
        assert_eq!(fit("site-a", 6), "site-a");
        assert_eq!(fit("site-a", 5), "site…");
        assert_eq!(fit("x", 0), "");
    }
}
