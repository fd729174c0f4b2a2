//! The edges and mappings tables. Columns are sized to their content and
//! the least important ones are left out when the terminal is narrow, so
//! no value is cut off mid-word; an over-long value ends in `…`.

use api::{EdgeHealth, MappingState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table, TableState};

use super::section;
use crate::format;
use crate::tui::app::{App, Focus};
use crate::tui::order::{self, SortKey};

/// One column: its header, its cells, how wide it may grow, and how much
/// it matters (0 most) when space runs out.
struct Column {
    header: &'static str,
    cells: Vec<(String, Style)>,
    max: usize,
    priority: u8,
    right: bool,
}

impl Column {
    fn new(header: &'static str, priority: u8, max: usize) -> Column {
        Column { header, cells: Vec::new(), max, priority, right: false }
    }

    /// Adds a cell, escaped: an edge reports its own version, and no
    /// value may drive the terminal.
    fn push(&mut self, (text, style): (String, Style)) {
        self.cells.push((tunnel::untrusted::escape_owned(text), style));
    }

    fn right(mut self) -> Column {
        self.right = true;
        self
    }

    fn width(&self) -> usize {
        let widest = self.cells.iter().map(|(t, _)| t.chars().count()).max().unwrap_or(0);
        widest.max(self.header.len()).min(self.max)
    }
}

/// Drops the least important columns until the rest fit in `width`;
/// returns them and the spacing to use.
fn fit(mut columns: Vec<Column>, width: usize) -> (Vec<Column>, u16) {
    loop {
        let total: usize = columns.iter().map(Column::width).sum();
        let gaps = columns.len().saturating_sub(1);
        for spacing in [2, 1] {
            if total + gaps * spacing <= width || columns.len() == 1 {
                return (columns, spacing as u16);
            }
        }
        let worst = columns.iter().map(|c| c.priority).max().unwrap_or(0);
        let i = columns.iter().rposition(|c| c.priority == worst).unwrap_or(0);
        columns.remove(i);
    }
}

fn render(
    frame: &mut Frame<'_>,
    area: Rect,
    columns: Vec<Column>,
    selected: Option<usize>,
    (heading, highlight): (Style, Style),
) {
    let (columns, spacing) = fit(columns, area.width as usize);
    let widths: Vec<usize> = columns.iter().map(Column::width).collect();
    let rows = columns.first().map_or(0, |c| c.cells.len());
    let line = |text: &str, style: Style, width: usize, right: bool| {
        let line = Line::styled(format::fit(text, width), style);
        if right { line.right_aligned() } else { line }
    };
    let header = Row::new(
        columns
            .iter()
            .zip(&widths)
            .map(|(c, w)| Cell::from(line(c.header, Style::new(), *w, c.right))),
    );
    let body = (0..rows).map(|r| {
        Row::new(columns.iter().zip(&widths).map(|(c, w)| {
            let (text, style) = &c.cells[r];
            Cell::from(line(text, *style, *w, c.right))
        }))
    });
    let constraints = widths.iter().map(|w| Constraint::Length(*w as u16));
    let table = Table::new(body, constraints)
        .header(header.style(heading))
        .column_spacing(spacing)
        .row_highlight_style(highlight);
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// The page of a table of `len` rows that holds `selected`, for an area
/// `height` rows high (one is the header); records its size for the page
/// keys. Returns the range and the selection within it.
fn paged(
    app: &App,
    table: usize,
    len: usize,
    height: u16,
    selected: Option<usize>,
) -> (std::ops::Range<usize>, Option<usize>) {
    let rows = (height as usize).saturating_sub(1).max(1);
    let mut shown = app.page_rows.get();
    shown[table] = rows;
    app.page_rows.set(shown);
    let range = order::page(len, rows, selected);
    let within = selected.map(|i| i.saturating_sub(range.start));
    (range, within)
}

/// "(5000)", or "(41–80 of 5000)" when the table has more than a page;
/// with the filter, the sort key and "problems only" when they apply.
fn count(app: &App, range: &std::ops::Range<usize>, shown: usize, total: usize) -> String {
    let rows = if range.len() < shown {
        format!("{}–{} of {shown}", range.start + 1, range.end)
    } else {
        shown.to_string()
    };
    let mut parts = vec![if shown < total { format!("{rows}, of {total} in all") } else { rows }];
    if !app.filter.is_empty() {
        parts.push(format!("filter \"{}\"", app.filter));
    }
    if app.problems_only {
        parts.push("problems only".to_owned());
    }
    if app.sort != SortKey::Name {
        parts.push(format!("by {}", app.sort.word()));
    }
    format!("({})", parts.join(", "))
}

fn title(app: &App, name: &str, count: String, focus: Focus) -> Line<'static> {
    let theme = app.theme;
    let focused = app.focus == focus;
    let marker = if focused { "▶ " } else { "  " };
    let mut spans = vec![
        Span::styled(
            format!("{marker}{name} "),
            if focused { theme.title() } else { theme.heading() },
        ),
        Span::styled(format!("{count} "), theme.dim()),
    ];
    if app.stale() {
        let age = format::age(app.data_age_ms());
        spans.push(Span::styled(format!("stale: last update {age} "), theme.bad()));
    }
    Line::from(spans)
}

/// Header and selection styles of a table.
fn styles(app: &App, focus: Focus) -> (Style, Style) {
    let theme = app.theme;
    let highlight = if app.focus == focus { theme.selected() } else { theme.selected_unfocused() };
    (theme.heading(), highlight)
}

/// The edges: health, tunnels, heartbeat round trips, host figures.
pub(super) fn edges(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let visible = app.visible_edges();
    let selected = app.edge_index();
    let (range, selected) = paged(app, 0, visible.len(), area.height.saturating_sub(1), selected);
    let heading = count(app, &range, visible.len(), app.edges().len());
    let area = section(frame, theme, area, title(app, "Edges", heading, Focus::Edges));
    if visible.is_empty() {
        let text = if app.edges().is_empty() {
            "no edges yet"
        } else {
            "no edge matches (Esc clears the filter, p shows everything)"
        };
        frame.render_widget(Line::styled(text, theme.dim()), area);
        return;
    }
    let mut cols = [
        Column::new("edge", 0, 24),
        Column::new("health", 0, 24),
        Column::new("tunnels", 1, 7).right(),
        Column::new("last seen", 1, 10).right(),
        Column::new("rtt p50/p99", 2, 17).right(),
        Column::new("cpu", 3, 5).right(),
        Column::new("memory", 3, 14).right(),
        Column::new("version", 4, 12),
    ];
    let plain = |t: String| (t, if app.stale() { theme.dim() } else { theme.text() });
    for e in &visible[range] {
        let (word, style) = match e.health {
            EdgeHealth::Connected => ("connected", theme.good()),
            EdgeHealth::Reconnecting => ("reconnecting", theme.warn()),
            EdgeHealth::Down => ("down", theme.bad()),
        };
        let (word, style) = if e.revoked { ("revoked", theme.bad()) } else { (word, style) };
        let health = if e.draining { format!("{word}, draining") } else { word.to_owned() };
        let style = if app.stale() { theme.dim() } else { style };
        let rtt = match (e.rtt_p50_us, e.rtt_p99_us) {
            (Some(p50), Some(p99)) => pair(p50, p99),
            _ => "–".to_owned(),
        };
        let seen = app.edge_silence_ms(e).map_or_else(|| "never".to_owned(), format::age);
        let memory = match (e.memory_used_bytes, e.memory_total_bytes) {
            (Some(used), Some(total)) => format::memory(used, total),
            _ => "–".to_owned(),
        };
        let values = [
            plain(e.id.clone()),
            (health, style),
            plain(format!("{}/{}", e.tunnels_up, e.tunnels_configured)),
            plain(seen),
            plain(rtt),
            plain(e.cpu_percent.map_or_else(|| "–".to_owned(), |c| format!("{c:.0}%"))),
            plain(memory),
            plain(e.version.clone().unwrap_or_else(|| "–".to_owned())),
        ];
        for (col, value) in cols.iter_mut().zip(values) {
            col.push(value);
        }
    }
    let selected = selected.filter(|_| app.focus == Focus::Edges);
    render(frame, area, cols.into(), selected, styles(app, Focus::Edges));
}

/// Two latencies sharing a unit when they can: `0.4/1.2 ms`.
fn pair(a: u64, b: u64) -> String {
    let (a, b) = (format::micros(a), format::micros(b));
    match (a.rsplit_once(' '), b.rsplit_once(' ')) {
        (Some((av, au)), Some((bv, bu))) if au == bu => format!("{av}/{bv} {bu}"),
        _ => format!("{a}/{b}"),
    }
}

/// The mappings that pass the filter.
pub(super) fn mappings(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let visible = app.visible_mappings();
    let total = app.snapshot.as_ref().map_or(0, |s| s.mappings.len());
    let selected = app.mapping_index();
    let (range, selected) = paged(app, 2, visible.len(), area.height.saturating_sub(1), selected);
    let heading = count(app, &range, visible.len(), total);
    let area = section(frame, theme, area, title(app, "Mappings", heading, Focus::Mappings));
    if visible.is_empty() {
        let text = if total == 0 {
            "no mappings yet: press a to add one"
        } else {
            "no mapping matches (Esc clears the filter, p shows everything)"
        };
        frame.render_widget(Line::styled(text, theme.dim()), area);
        return;
    }
    // A probe column only when some mapping on the page is probed.
    let probed = visible[range.clone()].iter().any(|m| m.probe.is_some());
    // And a host column only when some mapping on the page shares a port.
    let hosted = visible[range.clone()].iter().any(|m| m.spec.host.is_some());
    let mut cols = [
        Column::new("name", 0, 24),
        Column::new("state", 0, 26),
        Column::new("listen", 1, 26),
        Column::new("host", if hosted { 1 } else { u8::MAX }, 28),
        Column::new("edge", 2, 16),
        Column::new("target", 3, 30),
        Column::new("probe", if probed { 1 } else { u8::MAX }, 16),
        Column::new("conns", 1, 6).right(),
        Column::new("in", 1, 10).right(),
        Column::new("out", 1, 10).right(),
    ];
    let plain = |t: String| (t, if app.stale() { theme.dim() } else { theme.text() });
    for m in &visible[range] {
        let (state, style) = match m.state {
            MappingState::Active => ("active".to_owned(), theme.good()),
            MappingState::Draining => {
                let left = app
                    .drain_left_ms(m)
                    .map_or_else(String::new, |ms| format!(", {}", format::duration_ms(ms)));
                (format!("draining: {} open{left}", m.active_connections), theme.warn())
            }
            MappingState::Failed => ("failed".to_owned(), theme.bad()),
        };
        // In a cluster: the nodes that could not serve it.
        let (state, style) = match crate::cluster::failed_nodes(m) {
            Some(failed) if m.state == MappingState::Active => {
                let active =
                    m.nodes.iter().filter(|n| n.state == api::NodeMappingState::Active).count();
                (format!("active {active}/{}, {failed}", m.nodes.len()), theme.warn())
            }
            Some(_) if m.nodes.iter().all(|n| n.state == api::NodeMappingState::Failed) => {
                ("failed on every node".to_owned(), style)
            }
            Some(failed) => (format!("{state}, {failed}"), style),
            None => (state, style),
        };
        let (state, style) = if m.edge_revoked {
            (format!("{state}, edge revoked"), theme.bad())
        } else if m.state == MappingState::Active && app.edge_down(&m.spec.edge) {
            (format!("{state}, edge down"), theme.bad())
        } else {
            (state, style)
        };
        let style = if app.stale() { theme.dim() } else { style };
        let values = [
            plain(m.spec.name.clone()),
            (state, style),
            plain(m.bound.clone().unwrap_or_else(|| m.spec.listen.clone())),
            plain(m.spec.host.clone().unwrap_or_default()),
            plain(m.spec.edge.clone()),
            plain(m.spec.target.clone()),
            probe(app, m),
            plain(m.active_connections.to_string()),
            plain(format::rate(m.throughput_in_bps)),
            plain(format::rate(m.throughput_out_bps)),
        ];
        for (col, value) in cols.iter_mut().zip(values) {
            col.push(value);
        }
    }
    let mut cols: Vec<Column> = cols.into();
    cols.retain(|c| c.priority != u8::MAX);
    render(frame, area, cols, selected, styles(app, Focus::Mappings));
}

/// A mapping's probe in a few words (`ok 0.2ms`, `failed: refused`),
/// coloured by what it found.
pub(super) fn probe(app: &App, m: &api::MappingView) -> (String, Style) {
    use api::ProbeStatus;
    let theme = app.theme;
    let style = match m.probe.as_ref().map(|p| p.status) {
        Some(ProbeStatus::Ok) => theme.good(),
        Some(ProbeStatus::Slow) => theme.warn(),
        Some(ProbeStatus::Failed | ProbeStatus::NoTunnel) => theme.bad(),
        _ => theme.dim(),
    };
    (format::probe(m.probe.as_ref()), if app.stale() { theme.dim() } else { style })
}

/// The nodes of a cluster: ready or draining, the store, the revision
/// applied, connections, edges, mappings it could not serve, and whether
/// its figures are in the sums.
pub(super) fn nodes(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let nodes = app.nodes();
    let missing = app.missing_peers();
    let mut count = format!("({})", nodes.len());
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|p| p.node.as_str()).collect();
        count.push_str(&format!(" · figures without {}", names.join(", ")));
    }
    let area = section(frame, theme, area, title(app, "Nodes", count, Focus::Nodes));
    let mut cols = [
        Column::new("node", 0, 24),
        Column::new("state", 0, 24),
        Column::new("store", 1, 11),
        Column::new("revision", 1, 10).right(),
        Column::new("conns", 1, 6).right(),
        Column::new("edges", 2, 5).right(),
        Column::new("failures", 2, 8).right(),
        Column::new("figures", 3, 10),
    ];
    let stale = |style: Style| if app.stale() { theme.dim() } else { style };
    let plain = |t: String| (t, stale(theme.text()));
    for n in nodes {
        let (state, style) = match (n.draining, n.ready) {
            (true, _) => {
                let left = app
                    .node_drain_left_ms(n)
                    .map_or_else(String::new, |ms| format!(", {}", format::duration_ms(ms)));
                (format!("draining{left}"), theme.warn())
            }
            (false, true) => ("ready".to_owned(), theme.good()),
            (false, false) => ("not ready".to_owned(), theme.bad()),
        };
        let store = if n.store_reachable {
            ("reachable".to_owned(), stale(theme.text()))
        } else {
            ("unreachable".to_owned(), stale(theme.bad()))
        };
        let failures = n.mapping_failures.len();
        let failures =
            (failures.to_string(), stale(if failures > 0 { theme.bad() } else { theme.text() }));
        let figures = match missing.iter().find(|p| p.node == n.id) {
            _ if n.this_node => ("this node".to_owned(), stale(theme.dim())),
            // Why is in the node's detail.
            Some(_) => ("no answer".to_owned(), stale(theme.bad())),
            None => ("summed".to_owned(), stale(theme.dim())),
        };
        let values = [
            plain(n.id.clone()),
            (state, stale(style)),
            store,
            plain(n.applied_revision.to_string()),
            plain(n.connections.to_string()),
            plain(n.edges_connected.to_string()),
            failures,
            figures,
        ];
        for (col, value) in cols.iter_mut().zip(values) {
            col.push(value);
        }
    }
    let selected = app.node_index().filter(|_| app.focus == Focus::Nodes);
    render(frame, area, cols.into(), selected, styles(app, Focus::Nodes));
}
