//! One edge's view (Enter on an edge), in place of the tables: its state
//! and host, its tunnels (to each node, in a cluster), the mappings it
//! carries (its groups' too) and its recent events.

use api::EdgeView;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row, Table};

use super::{detail, section};
use crate::format;
use crate::tui::app::App;
use crate::tui::order;

/// Draws the edge `id` into `area`.
pub(super) fn draw(frame: &mut Frame<'_>, app: &App, area: Rect, id: &str) {
    let theme = app.theme;
    let escape = |t: &str| tunnel::untrusted::escape(t).into_owned();
    let (Some(e), Some(snapshot)) = (app.edge(id), app.snapshot.as_ref()) else {
        let inner = section(frame, theme, area, Line::styled(" edge ", theme.heading()));
        let text = format!("edge {} is not in the last snapshot (Esc goes back)", escape(id));
        frame.render_widget(Line::styled(text, theme.bad()), inner);
        return;
    };
    let version = escape(e.version.as_deref().unwrap_or("unknown"));
    let head = format!(" edge {} · version {version} · Esc back, ↑↓ the next edge ", escape(&e.id));
    let inner = section(frame, theme, area, Line::styled(head, theme.heading()));
    let width = inner.width as usize;

    let mut lines: Vec<Line<'static>> = Vec::new();
    let (state, style) = match order::edge_problem(e) {
        Some((_, word)) => (word.to_owned(), theme.bad()),
        None => ("connected".to_owned(), theme.good()),
    };
    let mut state = format!("{state} · {}/{} tunnels up", e.tunnels_up, e.tunnels_configured);
    if e.draining {
        state.push_str(" · draining: no new connections");
    }
    if !e.groups.is_empty() {
        state.push_str(&format!(" · groups {}", e.groups.join(", ")));
    }
    if let Some(until) = e.previous_token_until_unix_ms {
        let left = until.saturating_sub(snapshot.at_unix_ms);
        state.push_str(&format!(" · old token accepted {} more", format::duration_ms(left)));
    }
    lines.push(Line::styled(format::fit(&escape(&state), width), style));
    let failures = format::count(e.connect_failures);
    let text = format!("{} · {failures} destination connects failed", detail::edge_figures(app, e));
    lines.push(Line::styled(format::fit(&text, width), theme.dim()));
    lines.extend(detail::node_links(app, e, width));

    let mappings: Vec<&api::MappingView> = order::carried_by(snapshot, e).collect();
    let events: Vec<&api::Event> = app
        .events
        .newest_first()
        .filter(|ev| ev.subject == e.id || mappings.iter().any(|m| m.spec.name == ev.subject))
        .collect();
    let tunnels_h = if e.tunnels.is_empty() { 2 } else { 2 + e.tunnels.len().min(8) as u16 };
    let [info, tunnels, list, recent] = Layout::vertical([
        Constraint::Length(lines.len() as u16),
        Constraint::Length(tunnels_h),
        Constraint::Fill(3),
        Constraint::Fill(2),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(lines), info);
    draw_tunnels(frame, app, e, tunnels);
    draw_mappings(frame, app, &mappings, list);
    draw_events(frame, app, &events, recent);
}

fn draw_tunnels(frame: &mut Frame<'_>, app: &App, e: &EdgeView, area: Rect) {
    let theme = app.theme;
    let title = Line::styled(format!(" tunnels ({}) ", e.tunnels.len()), theme.heading());
    let inner = section(frame, theme, area, title);
    detail::tunnels(frame, app, e, inner, true);
}

fn draw_mappings(frame: &mut Frame<'_>, app: &App, mappings: &[&api::MappingView], area: Rect) {
    let theme = app.theme;
    let title =
        Line::styled(format!(" mappings it carries ({}) ", mappings.len()), theme.heading());
    let inner = section(frame, theme, area, title);
    if mappings.is_empty() {
        frame.render_widget(Line::styled("none", theme.dim()), inner);
        return;
    }
    let room = (inner.height as usize).saturating_sub(1);
    let more = mappings.len().saturating_sub(room);
    let shown = if more > 0 { room.saturating_sub(1) } else { room };
    let edge_down = |name: &str| app.edge_down(name);
    let mut rows: Vec<Row<'_>> = mappings[..shown.min(mappings.len())]
        .iter()
        .map(|m| {
            let (state, style) = match (order::mapping_problem(m, edge_down), m.state) {
                (Some((_, word)), _) => (word, theme.bad()),
                (None, api::MappingState::Draining) => ("draining", theme.warn()),
                (None, _) => ("active", theme.good()),
            };
            let (probe, probe_style) = super::tables::probe(app, m);
            Row::new([
                Line::raw(tunnel::untrusted::escape(&m.spec.name).into_owned()),
                Line::styled(state, style),
                Line::raw(tunnel::untrusted::escape(&m.spec.target).into_owned()),
                Line::styled(probe, probe_style),
                Line::raw(m.active_connections.to_string()).right_aligned(),
                Line::raw(format::rate(m.throughput_in_bps + m.throughput_out_bps)).right_aligned(),
            ])
        })
        .collect();
    if more > 0 {
        rows.push(Row::new([Line::styled(
            format!("… and {} more (filter by the edge's name to see them all)", more + 1),
            theme.dim(),
        )]));
    }
    let widths = [
        Constraint::Length(20),
        Constraint::Length(16),
        Constraint::Length(24),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(10),
    ];
    let header = Row::new(["name", "state", "target", "probe", "conns", "in+out"]);
    let table = Table::new(rows, widths).header(header.style(theme.heading())).column_spacing(1);
    frame.render_widget(table, inner);
}

fn draw_events(frame: &mut Frame<'_>, app: &App, events: &[&api::Event], area: Rect) {
    let theme = app.theme;
    let title = Line::styled(
        format!(" recent events of the edge and its mappings ({}) ", events.len()),
        theme.heading(),
    );
    let inner = section(frame, theme, area, title);
    if events.is_empty() {
        let text = "none among the newest events held (E shows them all)";
        frame.render_widget(Line::styled(text, theme.dim()), inner);
        return;
    }
    let width = inner.width as usize;
    let lines: Vec<Line<'_>> = events
        .iter()
        .take(inner.height as usize)
        .map(|ev| {
            let text = format!(
                "{} {} {}: {}",
                super::events::time(ev.at_unix_ms),
                ev.kind.as_str(),
                ev.subject,
                ev.text
            );
            Line::styled(format::fit(&tunnel::untrusted::escape(&text), width), theme.text())
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}
