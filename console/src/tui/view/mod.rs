//! Drawing: a function of the [`App`] and the frame size, nothing else.
//!
//! Top to bottom: a header line, the banner and status lines when there
//! is something to say, the edges, the nodes (in a cluster), the mappings,
//! the detail pane of the selection, and a footer with the main keys; or,
//! in the events view, the events in place of the tables. Dialogs open on
//! top.

mod detail;
mod edge;
mod events;
mod popup;
mod tables;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

use super::app::{App, Focus, Link, Mode};
use super::theme::Theme;
use crate::client::ClientError;
use crate::format;

/// Draws the whole screen.
pub(crate) fn draw(frame: &mut Frame<'_>, app: &App) {
    let area = frame.area();
    let banner = banner(app).map(|text| format::wrap(&text, area.width as usize));
    let banner_h = banner.as_ref().map_or(0, |b| b.len().min(3) as u16);
    let message = message(app, area.width);
    let message_h = message.as_ref().map_or(0, |m| m.len() as u16);
    let rest = area.height.saturating_sub(2 + banner_h + message_h);
    let ne = app.visible_edges().len().max(1) as u16;
    let nn = app.nodes().len() as u16;
    let nm = app.visible_mappings().len().max(1) as u16;
    let detail_min = 12.min(rest / 2);
    let edges_h = (2 + ne).min((rest / 4).max(3));
    let nodes_h = if nn == 0 { 0 } else { (2 + nn).min((rest / 5).max(3)) };
    let mappings_h = (2 + nm).min(rest.saturating_sub(edges_h + nodes_h + detail_min)).max(3);
    let [header, banner_area, message_area, edges, nodes, mappings, detail_area, footer] =
        Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(banner_h),
            Constraint::Length(message_h),
            Constraint::Length(edges_h),
            Constraint::Length(nodes_h),
            Constraint::Length(mappings_h),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(area);
    draw_header(frame, app, header);
    if let Some(lines) = banner {
        let lines: Vec<Line<'_>> = lines.into_iter().map(Line::from).collect();
        frame.render_widget(Paragraph::new(lines).style(app.theme.banner()), banner_area);
    }
    if let Some(lines) = message {
        frame.render_widget(Paragraph::new(lines), message_area);
    }
    if app.mode == Mode::Events {
        events::draw(frame, app, edges.union(detail_area));
    } else if let Mode::Edge(id) = &app.mode {
        edge::draw(frame, app, edges.union(detail_area), id);
    } else if app.snapshot.is_none() {
        let text = match &app.link {
            Link::Down(_) => "no data yet".to_owned(),
            _ => format!("connecting to {}…", app.endpoint),
        };
        let body = edges.union(detail_area);
        frame.render_widget(Paragraph::new(text).style(app.theme.dim()).centered(), body);
    } else {
        tables::edges(frame, app, edges);
        if nn > 0 {
            tables::nodes(frame, app, nodes);
        }
        tables::mappings(frame, app, mappings);
        match app.focus {
            Focus::Mappings => detail::mapping(frame, app, detail_area),
            Focus::Edges => detail::edge(frame, app, detail_area),
            Focus::Nodes => detail::node(frame, app, detail_area),
        }
    }
    draw_footer(frame, app, footer);
    popup::draw(frame, app, area);
}

/// A section's top rule with its title; returns the area below it.
pub(crate) fn section(frame: &mut Frame<'_>, theme: Theme, area: Rect, title: Line<'_>) -> Rect {
    let block = Block::new().borders(Borders::TOP).border_style(theme.border()).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    inner
}

/// The explanation shown when the cloud agent cannot be used.
fn banner(app: &App) -> Option<String> {
    let Link::Down(error) = &app.link else { return None };
    let what = match error {
        ClientError::Unauthorized { endpoint } => {
            format!("the admin token was refused by the cloud agent at {endpoint}")
        }
        other => other.to_string(),
    };
    Some(format!("{what} — retrying every second"))
}

/// The busy, status or hint text, in that order of precedence, wrapped
/// to `width` in at most two lines.
fn message(app: &App, width: u16) -> Option<Vec<Line<'static>>> {
    let theme = app.theme;
    let (text, style) = if let Some(busy) = &app.busy {
        (busy, theme.warn())
    } else if let Some(status) = &app.status {
        (&status.text, if status.error { theme.bad() } else { theme.good() })
    } else {
        (app.hint.as_ref()?, theme.title())
    };
    let lines = format::wrap(text, width as usize).into_iter().take(2);
    Some(lines.map(|line| Line::styled(line, style)).collect())
}

fn draw_header(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let (state, style) = match &app.link {
        Link::Connecting => ("○ connecting", theme.warn()),
        Link::Up => ("● connected", theme.good()),
        Link::Down(ClientError::Unauthorized { .. }) => ("✗ token refused", theme.bad()),
        Link::Down(ClientError::Unreachable { .. }) => ("✗ unreachable", theme.bad()),
        Link::Down(_) => ("✗ error", theme.bad()),
    };
    let age = match app.fetched_ms {
        None => "no data yet".to_owned(),
        Some(_) => format!("updated {}", format::age(app.data_age_ms())),
    };
    let sep = || Span::styled(" │ ", theme.dim());
    let mut spans =
        vec![Span::styled("hybrid relay", theme.title()), sep(), Span::raw(app.endpoint.clone())];
    if let Some(node) = app.nodes().iter().find(|n| n.this_node) {
        let node = tunnel::untrusted::escape(&node.id);
        spans.push(Span::styled(format!(" (node {node})"), theme.dim()));
    }
    spans.extend([
        sep(),
        Span::styled(state, style),
        sep(),
        Span::styled(age, if app.stale() { theme.bad() } else { theme.text() }),
    ]);
    let version = app.snapshot.as_ref().map(|s| format!("relay-cloud {}", s.version));
    let used: usize = spans.iter().map(Span::width).sum();
    if let Some(version) = version.filter(|v| used + v.len() + 2 <= area.width as usize) {
        let pad = area.width as usize - used - version.len();
        spans.push(Span::raw(" ".repeat(pad)));
        spans.push(Span::styled(version, theme.dim()));
    }
    frame.render_widget(Line::from(spans), area);
}

fn draw_footer(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let keys: &[(&str, &str)] = match (&app.mode, app.focus) {
        (Mode::Filter, _) => {
            let text = format!("/{}", app.filter);
            let line = Line::from(vec![
                Span::styled(text.clone(), theme.heading()),
                Span::styled("   Enter keep  Esc clear  ↑↓ select", theme.dim()),
            ]);
            frame.render_widget(line, area);
            let x = area.x + (text.chars().count() as u16).min(area.width.saturating_sub(1));
            frame.set_cursor_position((x, area.y));
            return;
        }
        (Mode::Edge(_), _) => &[
            ("↑↓", "next edge"),
            ("Esc Enter", "back"),
            ("E", "events"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Mode::Events, _) => &[
            ("↑↓", "scroll"),
            ("PgUp PgDn", "page"),
            ("E Esc", "back"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Mode::Normal, Focus::Mappings) => &[
            ("a", "add"),
            ("d", "drain"),
            ("x", "remove"),
            ("/", "filter"),
            ("Tab", "edges"),
            ("E", "events"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Mode::Normal, Focus::Edges) if !app.nodes().is_empty() => &[
            ("Enter", "view"),
            ("D", "drain edge"),
            ("n", "enrol"),
            ("/", "filter"),
            ("Tab", "nodes"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Mode::Normal, Focus::Edges) => &[
            ("Enter", "view"),
            ("D", "drain edge"),
            ("n", "enrol"),
            ("/", "filter"),
            ("Tab", "mappings"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Mode::Normal, Focus::Nodes) => &[
            ("D", "drain node"),
            ("/", "filter"),
            ("Tab", "mappings"),
            ("?", "help"),
            ("q", "quit"),
        ],
        _ => &[],
    };
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(format!(" {key}"), theme.key()));
        spans.push(Span::styled(format!(" {what} "), Style::new()));
    }
    frame.render_widget(Line::from(spans), area);
}
