//! The events view (`E`): the newest events first, one line each, in
//! place of the tables.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};

use crate::tui::app::App;
use crate::tui::events::MAX_HELD;

/// Draws the events held, from the scroll position, into `area`.
pub(super) fn draw(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let theme = app.theme;
    let feed = &app.events;
    let position = if feed.len() == 0 {
        String::new()
    } else {
        format!(
            " — {} to {} of {}",
            feed.scroll + 1,
            (feed.scroll + area.height.saturating_sub(2) as usize).min(feed.len()),
            feed.len()
        )
    };
    let title = Line::from(vec![
        Span::styled(" Events", theme.heading()),
        Span::styled(format!(", newest first (the last {MAX_HELD} held){position} "), theme.dim()),
    ]);
    let inner = super::section(frame, theme, area, title);
    if feed.len() == 0 {
        let text = "no events yet: tunnels, mapping changes and limits show here";
        frame.render_widget(Paragraph::new(text).style(theme.dim()).centered(), inner);
        return;
    }
    let rows = feed.newest_first().take(inner.height.saturating_sub(1) as usize).map(|e| {
        Row::new(vec![
            time(e.at_unix_ms),
            e.kind.as_str().to_owned(),
            tunnel::untrusted::escape(&e.subject).into_owned(),
            tunnel::untrusted::escape(&e.text).into_owned(),
        ])
    });
    let widths = [
        Constraint::Length(14),
        Constraint::Length(15),
        Constraint::Length(14),
        Constraint::Fill(1),
    ];
    let header = Row::new(["TIME (UTC)", "KIND", "SUBJECT", "TEXT"]).style(theme.heading());
    frame.render_widget(Table::new(rows, widths).header(header), inner);
}

/// `12-02 06:44:25`: month, day and time of day, UTC.
pub(super) fn time(at_unix_ms: u64) -> String {
    let full = crate::events::time(at_unix_ms); // 2026-12-02T06:44:25Z
    full.get(5..19).map_or(full.clone(), |t| t.replacen('T', " ", 1))
}
