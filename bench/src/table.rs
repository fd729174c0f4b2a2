//! The readable table of a run: figures side by side with the direct
//! connection, then memory and CPU of each agent, then the targets.

use std::fmt::Write;

use crate::report::{Compared, PerAgent, Report};
use crate::stats::Spread;

const MIB: f64 = 1024.0;

pub(crate) fn render(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    figures(&mut s, r);
    reference(&mut s, r);
    rate_limited(&mut s, r);
    agents(&mut s, r);
    load(&mut s, r);
    targets(&mut s, r);
    s
}

fn header(s: &mut String, r: &Report) {
    let p = &r.plan;
    let m = &r.machine;
    let _ = writeln!(
        s,
        "relay-bench ({} mode): bulk {} s x {} runs (1 and {} streams), {} round trips per size, \
         {} new connections, {} idle connections",
        p.mode,
        p.bulk_secs,
        p.bulk_repeats,
        p.parallel_streams,
        p.round_trips,
        p.new_connections,
        p.idle_large
    );
    let _ = writeln!(
        s,
        "machine: {}, {} cores, {:.0} GiB, Linux {}, {}; bench {} build, agents from {}\n",
        m.cpu_model,
        m.cores,
        m.memory_gib,
        m.kernel,
        m.rustc.as_deref().unwrap_or("rustc unknown"),
        m.bench_profile,
        m.agent_bin_dir
    );
    if !r.setup.env.is_empty() || r.setup.stream_window.is_some() {
        let _ = writeln!(
            s,
            "EXPERIMENT: agent environment {:?}, cloud stream_window {:?}\n",
            r.setup.env, r.setup.stream_window
        );
    }
}

fn row(s: &mut String, figure: &str, direct: &str, relay: &str, ratio: &str) {
    let _ = writeln!(s, "{figure:<40} {direct:>24} {relay:>24} {ratio:>8}");
}

fn throughput(x: &Spread) -> String {
    format!("{:.0} [{:.0}-{:.0}]", x.median, x.min, x.max)
}

fn figures(s: &mut String, r: &Report) {
    row(s, "figure", "direct", "relay", "ratio");
    row(s, "throughput MiB/s: median [min-max]", "", "", "");
    let label = |t: &crate::report::Throughput| {
        let streams =
            if t.streams == 1 { "1 stream".to_owned() } else { format!("{} streams", t.streams) };
        format!("  {streams}, {}", t.direction.label())
    };
    for t in &r.throughput {
        let (direct, relay) = (throughput(&t.direct_mib_s), throughput(&t.relay_mib_s));
        row(s, &label(t), &direct, &relay, &format!("{:.2}", t.ratio));
    }
    row(s, "CPU-s per GiB, whole path [cores busy]", "", "", "");
    for t in &r.throughput {
        let (d, rel) = (t.direct_path_cpu_per_gib, t.relay_path_cpu_per_gib);
        let direct = format!("{d:.2} s [{:.2}]", t.direct_path_cores);
        let relay = format!("{rel:.2} s [{:.2}]", t.relay_path_cores);
        row(s, &label(t), &direct, &relay, &format!("{:.2}", rel / d));
    }
    for rt in &r.round_trip {
        let size = if rt.message_bytes == 1 {
            "1 byte".to_owned()
        } else {
            format!("{} B", rt.message_bytes)
        };
        latency(s, &format!("round trip, {size}"), &rt.latency);
    }
    latency(s, "new connection (connect + first byte)", &r.new_connection);
    s.push('\n');
}

fn latency(s: &mut String, what: &str, c: &Compared) {
    let us = |v: f64| format!("{v:.1} µs");
    row(
        s,
        &format!("{what}, p50"),
        &us(c.direct.p50_us),
        &us(c.relay.p50_us),
        &format!("{:.2}", c.ratio_p50),
    );
    for (label, d, r) in
        [("p99", c.direct.p99_us, c.relay.p99_us), ("p99.9", c.direct.p999_us, c.relay.p999_us)]
    {
        row(s, &format!("{what}, {label}"), &us(d), &us(r), &format!("{:.2}", r / d));
    }
}

/// The reference chain beside the direct path, with the relay's ratio from
/// the main table for comparison.
fn rate_limited(s: &mut String, r: &Report) {
    let Some(first) = r.rate_limited.first() else { return };
    let _ = writeln!(
        s,
        "\nrate limit: mappings with rate_limit_in / rate_limit_out = {:.0} MiB/s, shared by their \
         connections",
        first.limit_mib_s
    );
    let _ = writeln!(s, "{:<34} {:>12} {:>8} {:>24}", "figure", "total", "of limit", "per stream");
    for row in &r.rate_limited {
        let each: Vec<String> = row.per_stream_mib_s.iter().map(|m| format!("{m:.2}")).collect();
        let _ = writeln!(
            s,
            "{:<34} {:>7.2} MiB/s {:>7.3} {:>24}",
            format!("{}, {} stream(s)", row.direction.label(), row.streams),
            row.total_mib_s,
            row.ratio,
            each.join(" + "),
        );
    }
    s.push('\n');
}

fn reference(s: &mut String, r: &Report) {
    let x = &r.reference;
    let _ = writeln!(
        s,
        "reference: two plain TCP proxies in a chain (tokio, 256 KiB buffers; no framing, \
         multiplexing or flow control)"
    );
    let _ = writeln!(
        s,
        "{:<40} {:>16} {:>16} {:>8} {:>12}",
        "figure", "direct", "two proxies", "ratio", "relay ratio"
    );
    let line =
        |s: &mut String, figure: &str, d: String, c: String, ratio: f64, relay: Option<f64>| {
            // The smoke run measures fewer relay figures than reference ones.
            let relay = relay.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
            let _ = writeln!(s, "{figure:<40} {d:>16} {c:>16} {ratio:>8.2} {relay:>12}");
        };
    let us = |v: f64| format!("{v:.1} µs");
    let relay_rt = r.round_trip.iter().find(|t| t.message_bytes == 1).map(|t| t.latency.ratio_p50);
    let rt = &x.round_trip_1b;
    line(
        s,
        "round trip, 1 byte, p50",
        us(rt.direct.p50_us),
        us(rt.relay.p50_us),
        rt.ratio_p50,
        relay_rt,
    );
    let nc = &x.new_connection;
    line(
        s,
        "new connection, p50",
        us(nc.direct.p50_us),
        us(nc.relay.p50_us),
        nc.ratio_p50,
        Some(r.new_connection.ratio_p50),
    );
    for t in &x.throughput {
        let relay = r
            .throughput
            .iter()
            .find(|m| m.streams == t.streams && m.direction == t.direction)
            .map(|m| m.ratio);
        let streams =
            if t.streams == 1 { "1 stream".into() } else { format!("{} streams", t.streams) };
        line(
            s,
            &format!("{streams}, {} MiB/s", t.direction.label()),
            throughput(&t.direct_mib_s),
            throughput(&t.chain_mib_s),
            t.ratio,
            relay,
        );
    }
    s.push('\n');
}

fn agent_row(s: &mut String, figure: &str, cloud: &str, edge: &str) {
    let _ = writeln!(s, "{figure:<40} {cloud:>16} {edge:>16}");
}

fn mib(v: PerAgent<u64>) -> (String, String) {
    let f = |kib: u64| format!("{:.1} MiB", kib as f64 / MIB);
    (f(v.cloud), f(v.edge))
}

fn agents(s: &mut String, r: &Report) {
    let m = &r.memory;
    let p = &r.plan;
    agent_row(s, "agent", "relay-cloud", "relay-edge");
    let rows = [
        ("memory idle (VmRSS, tunnels up)".to_owned(), mib(m.idle_kib)),
        (format!("memory, {} idle connections", p.idle_small), mib(m.small_kib)),
        (format!("memory, {} idle connections", p.idle_large), mib(m.large_kib)),
        ("memory after closing them".to_owned(), mib(m.after_close_kib)),
        ("peak memory during bulk (VmHWM)".to_owned(), mib(m.bulk_peak_kib)),
    ];
    for (figure, (cloud, edge)) in rows {
        agent_row(s, &figure, &cloud, &edge);
    }
    let per = m.per_connection_kib;
    agent_row(
        s,
        "memory per idle connection",
        &format!("{:.1} KiB", per.cloud),
        &format!("{:.1} KiB", per.edge),
    );
    let c = &r.cpu;
    let cpu = |v: f64| format!("{v:.2} s");
    agent_row(s, "CPU per GiB, client→service", &cpu(c.cloud.per_gib_up), &cpu(c.edge.per_gib_up));
    agent_row(
        s,
        "CPU per GiB, service→client",
        &cpu(c.cloud.per_gib_down),
        &cpu(c.edge.per_gib_down),
    );
    agent_row(s, "CPU per GiB, all bulk runs", &cpu(c.cloud.per_gib_all), &cpu(c.edge.per_gib_all));
    let us = |v: f64| format!("{v:.0} µs");
    for rt in &r.round_trip {
        let a = rt.agent_cpu_us_per_round_trip;
        agent_row(
            s,
            &format!("CPU per round trip, {} B", rt.message_bytes),
            &us(a.cloud),
            &us(a.edge),
        );
    }
    let a = r.agent_cpu_us_per_connection;
    agent_row(s, "CPU per new connection", &us(a.cloud), &us(a.edge));
    let c = &r.connections;
    for (how, opened, alive) in [
        ("one at a time".to_owned(), c.sequential, c.sequential_alive),
        (format!("{} at a time", c.burst_concurrency), c.burst, c.burst_alive),
    ] {
        let _ = writeln!(
            s,
            "{} connections through one mapping, {how}: {} served, {} refused, {} timed out; {alive} still open at the end",
            c.attempted, opened.served, opened.refused, opened.timed_out
        );
    }
    let _ = writeln!(
        s,
        "({:.2} GiB moved through the relay in the bulk runs; agent warnings while measured: {})\n",
        r.cpu.gib_up + r.cpu.gib_down,
        r.agent_warnings.len()
    );
}

fn load(s: &mut String, r: &Report) {
    let Some(l) = &r.load else { return };
    let disturbed =
        if l.other_share > 0.05 { ": FIGURES DISTURBED, rerun on a quiet machine" } else { "" };
    let _ = writeln!(
        s,
        "run took {:.0} s; other processes used {:.1} CPU-s meanwhile ({:.1}% of all cores){disturbed}; \
         steal {:.1} s\n",
        l.wall_secs,
        l.other_secs,
        l.other_share * 100.0,
        l.steal_secs
    );
}

fn targets(s: &mut String, r: &Report) {
    let _ = writeln!(s, "{:<56} {:<26} {:<34} result", "target", "goal", "measured");
    for c in &r.targets {
        let result = if c.met { "met" } else { "MISSED" };
        let _ = writeln!(s, "{:<56} {:<26} {:<34} {result}", c.figure, c.target, c.value);
    }
}
