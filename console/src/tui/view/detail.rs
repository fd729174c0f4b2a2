//! The detail pane: for a mapping its throughput sparkline and the
//! histograms of throughput and connect latency (and in a cluster where
//! it stands on each node); for an edge its tunnels and its links to the
//! nodes; for a node its state and the mappings it could not serve.

use api::{Distribution, MappingState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, Paragraph, Row, Sparkline, Table};

use super::section;
use crate::format;
use crate::tui::app::App;

/// The widest a histogram bar gets, so few buckets do not fill the pane.
const MAX_BAR: usize = 7;

/// The selected mapping.
pub(super) fn mapping(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let Some(m) = app.selected_mapping() else {
        section(frame, theme, area, Line::styled(" detail ", theme.heading()));
        return;
    };
    let s = &m.spec;
    let listen = m.bound.as_deref().unwrap_or(&s.listen);
    let head = format!(" {} · {listen} → edge {} → {} ", s.name, s.edge, s.target);
    let head = format::fit(&head, area.width.saturating_sub(4) as usize);
    let inner = section(frame, theme, area, Line::styled(head, theme.heading()));
    let mut lines = Vec::new();
    if let (MappingState::Failed, Some(error)) = (m.state, &m.error) {
        for line in
            format::wrap(&format!("failed: {error}"), inner.width as usize).into_iter().take(2)
        {
            lines.push(Line::styled(line, theme.bad()));
        }
    }
    if let Some(on_nodes) = crate::cluster::mapping_on_nodes(m) {
        let failed = crate::cluster::failed_nodes(m).is_some();
        let style = if failed { theme.bad() } else { theme.dim() };
        let text = tunnel::untrusted::escape_owned(format!("nodes: {on_nodes}"));
        for line in format::wrap(&text, inner.width as usize).into_iter().take(2) {
            lines.push(Line::styled(line, style));
        }
    }
    let allow = if s.allow.is_empty() { "any".to_owned() } else { s.allow.join(", ") };
    let info = format!(
        "{} open · {} total · {} failed · in {} · out {} · allow {allow}",
        format::count(m.active_connections),
        format::count(m.total_connections),
        format::count(m.failed_connections),
        format::decimal(m.bytes_in),
        format::decimal(m.bytes_out),
    );
    lines.push(Line::styled(format::fit(&info, inner.width as usize), theme.dim()));
    if let Some(settings) = settings(m) {
        for line in format::wrap(&settings, inner.width as usize).into_iter().take(2) {
            lines.push(Line::styled(line, theme.dim()));
        }
    }
    let [info_area, charts] =
        Layout::vertical([Constraint::Length(lines.len() as u16), Constraint::Fill(1)])
            .areas(inner);
    frame.render_widget(Paragraph::new(lines), info_area);

    let series =
        app.snapshot.as_ref().and_then(|snap| snap.series.iter().find(|x| x.name == s.name));
    let Some(series) = series else {
        frame.render_widget(Line::styled("no figures yet", theme.dim()), charts);
        return;
    };
    // Histograms need a title, bars and an axis: 5 rows at least.
    let hist_h = if charts.height >= 9 { (charts.height * 3 / 5).max(5) } else { 0 };
    let [spark_area, _, hist_area] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(u16::from(hist_h > 0)),
        Constraint::Length(hist_h.saturating_sub(1)),
    ])
    .areas(charts);
    let width = spark_area.width as usize;
    let total: Vec<u64> =
        series.throughput_in.iter().zip(&series.throughput_out).map(|(i, o)| i + o).collect();
    let shown = &total[total.len().saturating_sub(width)..];
    let peak = shown.iter().copied().max().unwrap_or(0);
    let now = shown.last().copied().unwrap_or(0);
    let label = format!(
        "throughput in+out, last {}: now {}, peak {}",
        format::duration_ms(shown.len() as u64 * 1000),
        format::rate(now),
        format::rate(peak),
    );
    let [label_area, chart_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(spark_area);
    frame.render_widget(Line::styled(format::fit(&label, width), theme.heading()), label_area);
    let spark = Sparkline::default().data(shown).max(peak.max(1)).style(theme.chart());
    frame.render_widget(spark, chart_area);
    if hist_h == 0 {
        return;
    }
    let [left, _, right] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(2), Constraint::Fill(1)])
            .areas(hist_area);
    histogram(frame, app, left, "throughput", &series.throughput, format::rate);
    histogram(frame, app, right, "connect", &series.connect_latency_us, format::micros);
}

/// What the mapping is set to do beyond carrying bytes, on one line;
/// `None` for a mapping with none of it.
fn settings(m: &api::MappingView) -> Option<String> {
    let s = &m.spec;
    let mut parts = Vec::new();
    if let Some(host) = &s.host {
        parts.push(format!("shares its address: takes host {host}"));
    }
    if let Some(max) = s.max_connections {
        parts.push(format!("at most {} connections", format::count(u64::from(max))));
    }
    if let Some(version) = s.proxy_protocol {
        parts.push(format!("PROXY {version} header to the target"));
    }
    let hits = m.policy_hits.unwrap_or_default();
    if let Some(n) = s.max_connections_per_client {
        parts.push(format!("{n} per client (refused {})", format::count(hits.refused_concurrent)));
    }
    if let Some(n) = s.new_connections_per_client {
        parts.push(format!("{n} new/s per client (refused {})", format::count(hits.refused_rate)));
    }
    for (dir, rate, waits) in [
        ("in", s.rate_limit_in_bps, hits.throttled_in),
        ("out", s.rate_limit_out_bps, hits.throttled_out),
    ] {
        if let Some(rate) = rate {
            parts.push(format!("{dir} ≤ {} (waited {})", config::rate(rate), format::count(waits)));
        }
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// A distribution as bars over log-2 slots, with p50 and p99 above and
/// the range below.
fn histogram(
    frame: &mut Frame<'_>,
    app: &App,
    area: Rect,
    name: &str,
    d: &Distribution,
    human: fn(u64) -> String,
) {
    let theme = app.theme;
    let [title, bars_area, axis] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1), Constraint::Length(1)])
            .areas(area);
    let width = area.width as usize;
    if d.count == 0 || d.buckets.is_empty() {
        frame.render_widget(Line::styled(format!("{name}: no samples yet"), theme.dim()), title);
        return;
    }
    let heading = format!("{name} p50 {}  p99 {}", human(d.p50), human(d.p99));
    frame.render_widget(Line::styled(format::fit(&heading, width), theme.heading()), title);
    let counts = slots(d, width.max(1));
    let n = counts.len();
    let gap = usize::from(2 * n - 1 <= width);
    let bar_width = ((width + gap) / n).saturating_sub(gap).clamp(1, MAX_BAR);
    let bars: Vec<Bar<'_>> =
        counts.iter().map(|c| Bar::default().value(*c).text_value("")).collect();
    let chart = BarChart::new(bars)
        .bar_width(bar_width as u16)
        .bar_gap(gap as u16)
        .bar_style(theme.chart());
    frame.render_widget(chart, bars_area);
    let (low, high) = (d.buckets[0].le, d.buckets[d.buckets.len() - 1].le);
    let (low, high) = (format!("≤{}", human(low)), format!("≤{}", human(high)));
    if n == 1 {
        frame.render_widget(Line::styled(format::fit(&low, width), theme.dim()), axis);
        return;
    }
    let used = (bar_width + gap) * n - gap;
    let pad = used.max(low.chars().count() + high.chars().count() + 1)
        - low.chars().count()
        - high.chars().count();
    let axis_text = format::fit(&format!("{low}{}{high}", " ".repeat(pad)), width);
    frame.render_widget(Line::styled(axis_text, theme.dim()), axis);
}

/// Bucket counts gathered into consecutive log-2 slots (empty ones
/// included, so the shape is true), merged pairwise until at most `max`.
fn slots(d: &Distribution, max: usize) -> Vec<u64> {
    let bits = |v: u64| 64 - v.leading_zeros() as usize;
    let lo = d.buckets.iter().map(|b| bits(b.le)).min().unwrap_or(0);
    let hi = d.buckets.iter().map(|b| bits(b.le)).max().unwrap_or(0);
    let mut counts = vec![0u64; hi - lo + 1];
    for b in &d.buckets {
        counts[bits(b.le) - lo] += b.count;
    }
    while counts.len() > max {
        counts = counts.chunks(2).map(|c| c.iter().sum()).collect();
    }
    counts
}

/// The selected edge: its tunnels.
pub(super) fn edge(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let Some(e) = app.selected_edge() else {
        section(frame, theme, area, Line::styled(" detail ", theme.heading()));
        return;
    };
    let version = tunnel::untrusted::escape(e.version.as_deref().unwrap_or("unknown"));
    let head = format!(" edge {} · version {version} ", e.id);
    let inner = section(frame, theme, area, Line::styled(head, theme.heading()));
    let mappings: Vec<&str> = app
        .snapshot
        .iter()
        .flat_map(|s| crate::tui::order::carried_by(s, e))
        .map(|m| m.spec.name.as_str())
        .collect();
    let info = format!(
        "{} destination connect failures · {} · mappings: {}",
        e.connect_failures,
        if e.draining { "draining: no new connections" } else { "taking new connections" },
        if mappings.is_empty() { "none".to_owned() } else { mappings.join(", ") },
    );
    let figures = edge_figures(app, e);
    let width = inner.width as usize;
    let mut lines = vec![
        Line::styled(format::fit(&info, width), theme.dim()),
        Line::styled(format::fit(&figures, width), theme.dim()),
    ];
    lines.extend(node_links(app, e, width));
    let [info_area, _, table_area] = Layout::vertical([
        Constraint::Length(lines.len() as u16),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(lines), info_area);
    tunnels(frame, app, e, table_area, false);
}

/// An edge's live tunnels as a table (with the token each proved, when
/// `with_token`), or "no tunnel up".
pub(super) fn tunnels(
    frame: &mut Frame<'_>,
    app: &App,
    e: &api::EdgeView,
    area: Rect,
    with_token: bool,
) {
    let theme = app.theme;
    if e.tunnels.is_empty() {
        frame.render_widget(Line::styled("no tunnel up", theme.bad()), area);
        return;
    }
    let rows = e.tunnels.iter().map(|t| {
        let mut cells = vec![
            format!("#{}", t.id),
            t.streams.to_string(),
            t.rtt_us.map_or_else(|| "–".to_owned(), format::micros),
            if t.draining { "draining".to_owned() } else { "up".to_owned() },
        ];
        if with_token {
            let token = t.credential.as_deref().unwrap_or("–");
            cells.push(tunnel::untrusted::escape(token).into_owned());
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(9),
    ];
    let mut header = vec!["tunnel", "streams", "rtt", "state"];
    if with_token {
        widths.push(Constraint::Fill(1));
        header.push("token");
    }
    let header = Row::new(header).style(theme.heading());
    let table = Table::new(rows, widths).header(header).column_spacing(2);
    frame.render_widget(table, area);
}

/// An edge's host load, round trips and last frame, in one line.
pub(super) fn edge_figures(app: &App, e: &api::EdgeView) -> String {
    let host = match (e.cpu_percent, e.memory_used_bytes, e.memory_total_bytes) {
        (Some(cpu), Some(used), Some(total)) => {
            format!("host cpu {cpu:.0}% · memory {}", format::memory(used, total))
        }
        _ => "no host report".to_owned(),
    };
    let rtt = match (e.rtt_p50_us, e.rtt_p99_us) {
        (Some(p50), Some(p99)) => {
            format!("rtt p50 {}  p99 {}", format::micros(p50), format::micros(p99))
        }
        _ => "no rtt samples".to_owned(),
    };
    let seen = app.edge_silence_ms(e).map_or_else(|| "never".to_owned(), format::age);
    format!("{host} · {rtt} · last seen {seen}")
}

/// In a cluster, an edge's tunnels to each node: one line with them all,
/// then one per node it cannot reach, with why.
pub(super) fn node_links(app: &App, e: &api::EdgeView, width: usize) -> Vec<Line<'static>> {
    let theme = app.theme;
    if e.node_links.is_empty() {
        return Vec::new();
    }
    let all: Vec<String> = e
        .node_links
        .iter()
        .map(|l| match l.tunnels_up {
            0 => format!("{} none", l.node),
            n => format!("{} {n} up", l.node),
        })
        .collect();
    let mut lines = vec![Line::styled(
        format::fit(
            &tunnel::untrusted::escape_owned(format!("tunnels to nodes: {}", all.join(" · "))),
            width,
        ),
        theme.dim(),
    )];
    for l in e.node_links.iter().filter(|l| l.tunnels_up == 0) {
        let why = l.error.as_deref().unwrap_or("no tunnel, no error reported");
        let text = tunnel::untrusted::escape_owned(format!("cannot reach node {}: {why}", l.node));
        lines.push(Line::styled(format::fit(&text, width), theme.bad()));
    }
    lines
}

/// The selected node of a cluster.
pub(super) fn node(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let Some(n) = app.selected_node() else {
        section(frame, theme, area, Line::styled(" detail ", theme.heading()));
        return;
    };
    let escape = |t: &str| tunnel::untrusted::escape(t).into_owned();
    let head = format!(" node {} · version {} ", escape(&n.id), escape(&n.version));
    let head = format::fit(&head, area.width.saturating_sub(4) as usize);
    let inner = section(frame, theme, area, Line::styled(head, theme.heading()));
    let width = inner.width as usize;
    let at = app.snapshot.as_ref().map_or(0, |s| s.at_unix_ms);
    let ago = |ms: u64| format::age(at.saturating_sub(ms) + app.data_age_ms());
    let mut lines = Vec::new();
    let mut line = |text: String, style| {
        for l in format::wrap(&escape(&text), width).into_iter().take(3) {
            lines.push(Line::styled(l, style));
        }
    };
    let control = n.control_url.as_deref().map_or_else(String::new, |c| format!(" · control {c}"));
    line(format!("edges dial {}{control}", n.advertise), theme.dim());
    let (state, style) = match (n.draining, n.ready) {
        (true, _) => {
            let left = app.node_drain_left_ms(n).map_or_else(
                || "draining".to_owned(),
                |ms| format!("draining: open connections are reset in {}", format::duration_ms(ms)),
            );
            (left, theme.warn())
        }
        (false, true) => ("ready: the load balancer sends to it".to_owned(), theme.good()),
        (false, false) => ("not ready".to_owned(), theme.bad()),
    };
    line(state, style);
    let store = if n.store_reachable { "reachable" } else { "unreachable: serving its last state" };
    line(
        format!(
            "store {store} · revision {} · {} open · {} edges · started {} · record {}",
            n.applied_revision,
            format::count(n.connections),
            n.edges_connected,
            ago(n.started_unix_ms),
            ago(n.updated_unix_ms),
        ),
        if n.store_reachable { theme.dim() } else { theme.bad() },
    );
    match app.missing_peers().iter().find(|p| p.node == n.id) {
        Some(p) => line(
            format!(
                "its figures are not in the sums: {}",
                p.error.as_deref().unwrap_or("it did not answer")
            ),
            theme.bad(),
        ),
        None if n.this_node => line("the node that answered".to_owned(), theme.dim()),
        None => {}
    }
    if n.mapping_failures.is_empty() {
        line("serves every mapping".to_owned(), theme.dim());
    }
    for f in &n.mapping_failures {
        line(format!("cannot serve {}: {}", f.mapping, f.error), theme.bad());
    }
    frame.render_widget(Paragraph::new(lines), inner);
}
