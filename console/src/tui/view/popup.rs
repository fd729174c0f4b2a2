//! Dialogs drawn over the main view: the add form, confirmations, help.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Padding, Paragraph};

use crate::format;
use crate::tui::app::{App, Confirm, Mode};
use crate::tui::enrol::{EnrolField, EnrolForm};
use crate::tui::form::{AddForm, Field};
use crate::tui::keys::HELP;
use crate::tui::theme::Theme;

/// Width of the labels of form fields.
const LABEL: usize = 9;

/// Draws the open dialog, if any.
pub(super) fn draw(frame: &mut Frame<'_>, app: &App, area: Rect) {
    match &app.mode {
        Mode::Add(form) => add_form(frame, app.theme, area, form),
        Mode::Confirm(confirm) => self::confirm(frame, app.theme, area, confirm),
        Mode::Help => help(frame, app.theme, area),
        Mode::Enrol(form) => enrol_form(frame, app.theme, area, form),
        Mode::Enrolled(ticket) => enrolled(frame, app.theme, area, ticket),
        Mode::Normal | Mode::Filter | Mode::Events | Mode::Edge(_) => {}
    }
}

/// A box of `width` by the lines' height, centred; returns its inside.
fn open(
    frame: &mut Frame<'_>,
    theme: Theme,
    area: Rect,
    title: &str,
    width: u16,
    height: u16,
) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    let rect = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, rect);
    let block = Block::bordered()
        .padding(Padding::horizontal(1))
        .border_style(theme.border())
        .title(Line::styled(format!(" {title} "), theme.title()));
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    inner
}

/// Key hints: `[("Enter", "add"), ...]` as one line.
fn keys_line(theme: Theme, keys: &[(&str, &str)]) -> Line<'static> {
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(key.to_string(), theme.key()));
        spans.push(Span::raw(format!(" {what}   ")));
    }
    Line::from(spans)
}

fn add_form(frame: &mut Frame<'_>, theme: Theme, area: Rect, form: &AddForm) {
    let width = area.width.saturating_sub(4).min(78);
    let text_width = (width as usize).saturating_sub(4 + LABEL);
    let mut lines: Vec<Line<'_>> = Vec::new();
    let mut cursor = (0, 0);
    for field in Field::ALL {
        let focused = form.focus == field;
        let value = form.value(field);
        let label_style = if focused { theme.key() } else { theme.heading() };
        let marker = if focused { "›" } else { " " };
        let mut spans = vec![Span::styled(
            format!("{marker}{:<w$}", field.label(), w = LABEL - 1),
            label_style,
        )];
        let shown = format::fit(value, text_width.saturating_sub(1));
        let edge_hint = format!("  ←/→: {}", form.edges().join(", "));
        if focused {
            cursor = (LABEL + shown.chars().count(), lines.len());
        }
        if value.is_empty() {
            spans.push(Span::styled(format::fit(field.hint(), text_width), theme.dim()));
        } else {
            let room = text_width.saturating_sub(shown.chars().count());
            spans.push(Span::raw(shown));
            if focused && field == Field::Edge && !form.edges().is_empty() {
                spans.push(Span::styled(format::fit(&edge_hint, room), theme.dim()));
            }
        }
        lines.push(Line::from(spans));
        if let Some((_, message)) = form.error.as_ref().filter(|(f, _)| *f == field) {
            for (i, line) in
                format::wrap(message, text_width.saturating_sub(2)).into_iter().enumerate()
            {
                let mark = if i == 0 { "✗ " } else { "  " };
                lines.push(Line::styled(format!("{:LABEL$}{mark}{line}", ""), theme.bad()));
            }
        }
    }
    lines.push(Line::raw(""));
    if form.pending {
        lines.push(Line::styled(
            format!("adding {}…", form.value(Field::Name).trim()),
            theme.warn(),
        ));
    } else if let Some(error) = &form.server_error {
        let text = format!("the cloud agent refused: {error}");
        for line in format::wrap(&text, (width as usize).saturating_sub(5)) {
            lines.push(Line::styled(format!(" {line}"), theme.bad()));
        }
    }
    lines.push(keys_line(
        theme,
        &[
            ("Tab/↑↓", "field"),
            ("Enter", "next, add on last"),
            ("Ctrl-S", "add"),
            ("Esc", "cancel"),
        ],
    ));
    let inner = open(frame, theme, area, "Add mapping", width, lines.len() as u16 + 2);
    frame.render_widget(Paragraph::new(lines), inner);
    if !form.pending {
        let x = inner.x + (cursor.0 as u16).min(inner.width.saturating_sub(1));
        let y = inner.y + (cursor.1 as u16).min(inner.height.saturating_sub(1));
        frame.set_cursor_position((x, y));
    }
}

fn enrol_form(frame: &mut Frame<'_>, theme: Theme, area: Rect, form: &EnrolForm) {
    let width = area.width.saturating_sub(4).min(72);
    let text_width = (width as usize).saturating_sub(4 + LABEL);
    let mut lines: Vec<Line<'_>> = Vec::new();
    let mut cursor = (0, 0);
    for field in EnrolField::ALL {
        let focused = form.focus == field;
        let value = form.value(field);
        let label_style = if focused { theme.key() } else { theme.heading() };
        let marker = if focused { "›" } else { " " };
        let mut spans = vec![Span::styled(
            format!("{marker}{:<w$}", field.label(), w = LABEL - 1),
            label_style,
        )];
        let shown = format::fit(value, text_width.saturating_sub(1));
        if focused {
            cursor = (LABEL + shown.chars().count(), lines.len());
        }
        if value.is_empty() {
            spans.push(Span::styled(format::fit(field.hint(), text_width), theme.dim()));
        } else {
            spans.push(Span::raw(shown));
        }
        lines.push(Line::from(spans));
        if let Some((_, message)) = form.error.as_ref().filter(|(f, _)| *f == field) {
            for line in format::wrap(message, text_width.saturating_sub(2)) {
                lines.push(Line::styled(format!("{:LABEL$}✗ {line}", ""), theme.bad()));
            }
        }
    }
    lines.push(Line::raw(""));
    let wrap = (width as usize).saturating_sub(5);
    if form.pending {
        lines.push(Line::styled("making the code…", theme.warn()));
    } else if let Some(error) = &form.server_error {
        for line in format::wrap(&format!("the cloud agent refused: {error}"), wrap) {
            lines.push(Line::styled(format!(" {line}"), theme.bad()));
        }
    } else {
        let about = "A one-time code for the site's machine; an edge of this name is added \
                     if there is none. Its destinations are set there, not here.";
        lines.extend(format::wrap(about, wrap).into_iter().map(|l| Line::styled(l, theme.dim())));
    }
    lines.push(keys_line(
        theme,
        &[("Tab/↑↓", "field"), ("Enter", "next, make on last"), ("Esc", "cancel")],
    ));
    let inner = open(frame, theme, area, "Enrol a new site", width, lines.len() as u16 + 2);
    frame.render_widget(Paragraph::new(lines), inner);
    if !form.pending {
        let x = inner.x + (cursor.0 as u16).min(inner.width.saturating_sub(1));
        let y = inner.y + (cursor.1 as u16).min(inner.height.saturating_sub(1));
        frame.set_cursor_position((x, y));
    }
}

/// The code made: the command to run on the on-prem machine, whole (it
/// is broken where the width ends, never cut: it is to be copied).
fn enrolled(frame: &mut Frame<'_>, theme: Theme, area: Rect, ticket: &api::EnrolmentTicket) {
    let width = area.width.saturating_sub(2).min(100);
    let wrap = (width as usize).saturating_sub(4).max(1);
    let escape = |t: &str| tunnel::untrusted::escape(t).into_owned();
    let expires = crate::events::time(ticket.expires_unix_ms);
    let mut lines: Vec<Line<'_>> = Vec::new();
    let head = format!(
        "A one-time code for edge {}, valid until {expires}. On the on-prem machine, run:",
        escape(&ticket.edge_id)
    );
    lines.extend(format::wrap(&head, wrap).into_iter().map(Line::raw));
    lines.push(Line::raw(""));
    let command: Vec<char> = escape(&ticket.command).chars().collect();
    for chunk in command.chunks(wrap) {
        lines.push(Line::styled(chunk.iter().collect::<String>(), theme.key()));
    }
    lines.push(Line::raw(""));
    let after = "then `relay-edge --config /etc/relay/edge.toml` (or the systemd unit). \
                 relayctl prints this command again when it exits.";
    lines.extend(format::wrap(after, wrap).into_iter().map(|l| Line::styled(l, theme.dim())));
    lines.push(keys_line(theme, &[("Enter/Esc", "close")]));
    let inner = open(frame, theme, area, "Site enrolment", width, lines.len() as u16 + 2);
    frame.render_widget(Paragraph::new(lines), inner);
}

fn confirm(frame: &mut Frame<'_>, theme: Theme, area: Rect, confirm: &Confirm) {
    let width = area.width.saturating_sub(4).min(64);
    let wrap_width = (width as usize).saturating_sub(4);
    let conns = |n: u64| {
        if n == 1 { "1 open connection".to_owned() } else { format!("{n} open connections") }
    };
    let (title, text, verb) = match confirm {
        Confirm::Drain { name, open: 0, .. } => (
            format!("Drain {name}"),
            format!(
                "New connections to {name} are refused at once. It has no open connections, \
                 so it is removed at once."
            ),
            "drain",
        ),
        Confirm::Drain { name, open, .. } => (
            format!("Drain {name}"),
            format!(
                "New connections to {name} are refused at once. Its {} may finish until the \
                 deadline; then they are reset and the mapping is removed.",
                conns(*open)
            ),
            "drain",
        ),
        Confirm::Remove { name, open } => (
            format!("Remove {name}"),
            format!(
                "Remove {name} now? Its {} are reset at once. To let them finish, \
                 drain it instead (d).",
                conns(*open)
            ),
            "remove",
        ),
        Confirm::DrainEdge { id, mappings } => (
            format!("Drain edge {id}"),
            format!(
                "New connections stop going to edge {id} ({}); \
                 open ones finish. Other edges of a group take over.",
                mappings_use_it(*mappings)
            ),
            "drain",
        ),
        Confirm::DrainNode { id, open, .. } => (
            format!("Drain node {id}"),
            format!(
                "Node {id} reports not-ready, so the load balancer stops sending to it; the \
                 other nodes carry new connections. Its {} may finish until the deadline; \
                 then they are reset.",
                conns(*open)
            ),
            "drain",
        ),
        Confirm::UndrainNode { id } => (
            format!("Undrain node {id}"),
            format!("Node {id} reports ready again, and takes new connections."),
            "undrain",
        ),
        Confirm::RevokeEdge { id, mappings } => (
            format!("Revoke edge {id}"),
            format!(
                "Edge {id} is cut off now: its tunnels close on every node and its open \
                 connections are reset ({}). It is refused until it \
                 gets a new token (relayctl edges rotate-token {id}).",
                mappings_use_it(*mappings)
            ),
            "revoke",
        ),
        Confirm::UndrainEdge { id, mappings } => (
            format!("Undrain edge {id}"),
            format!("New connections go to edge {id} again ({}).", mappings_use_it(*mappings)),
            "undrain",
        ),
    };
    let mut lines: Vec<Line<'_>> =
        format::wrap(&text, wrap_width).into_iter().map(Line::raw).collect();
    let mut cursor = None;
    if let Confirm::Drain { deadline, error, .. } | Confirm::DrainNode { deadline, error, .. } =
        confirm
    {
        lines.push(Line::raw(""));
        let label = "deadline ";
        cursor = Some((label.len() + deadline.chars().count(), lines.len()));
        lines.push(Line::from(vec![
            Span::styled(label, theme.heading()),
            Span::raw(deadline.clone()),
            Span::styled("   e.g. 90s, 5m, 1h", theme.dim()),
        ]));
        if let Some(error) = error {
            for line in format::wrap(&format!("✗ {error}"), wrap_width) {
                lines.push(Line::styled(line, theme.bad()));
            }
        }
    }
    lines.push(Line::raw(""));
    lines.push(keys_line(theme, &[("Enter/y", verb), ("Esc/n", "cancel")]));
    let inner = open(frame, theme, area, &title, width, lines.len() as u16 + 2);
    frame.render_widget(Paragraph::new(lines), inner);
    if let Some((x, y)) = cursor {
        frame.set_cursor_position((inner.x + x as u16, inner.y + y as u16));
    }
}

fn help(frame: &mut Frame<'_>, theme: Theme, area: Rect) {
    let entries = || HELP.iter().filter(|(_, what)| !what.is_empty());
    let key_width = entries().map(|(k, _)| k.chars().count()).max().unwrap_or(0) + 2;
    let widest = entries().map(|(_, what)| what.chars().count()).max().unwrap_or(0);
    // An indent, the keys, the text, the padding and the borders.
    let width = (1 + key_width + widest + 4) as u16;
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(key, what)| match (key.is_empty(), what.is_empty()) {
            (true, _) => Line::raw(""),
            (false, true) => Line::styled(key.to_string(), theme.heading()),
            _ => Line::from(vec![
                Span::styled(format!(" {key:<key_width$}"), theme.key()),
                Span::styled(what.to_string(), Style::new()),
            ]),
        })
        .collect();
    let inner = open(frame, theme, area, "Keys (any key closes)", width, lines.len() as u16 + 2);
    frame.render_widget(Paragraph::new(lines), inner);
}

/// "1 mapping uses it", "3 mappings use it".
fn mappings_use_it(n: usize) -> String {
    if n == 1 { "1 mapping uses it".to_owned() } else { format!("{n} mappings use it") }
}
