//! Styles, with colours only when the terminal should have them.
//!
//! `NO_COLOR` (non-empty, see <https://no-color.org>) turns every colour
//! off; modifiers (bold, reversed, dim) stay so selection and emphasis
//! still show.

use ratatui::style::{Color, Modifier, Style};

/// The console's styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Theme {
    color: bool,
}

impl Theme {
    /// Decides from the environment, read through `var` so tests need not
    /// touch the process's environment.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Theme {
        let no_color = var("NO_COLOR").is_some_and(|v| !v.is_empty());
        Theme { color: !no_color }
    }

    /// With or without colours.
    pub(crate) const fn new(color: bool) -> Theme {
        Theme { color }
    }

    fn fg(self, color: Color) -> Style {
        if self.color { Style::new().fg(color) } else { Style::new() }
    }

    /// Plain text.
    pub(crate) fn text(self) -> Style {
        Style::new()
    }

    /// Titles and the app name.
    pub(crate) fn title(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// Column headers, field labels.
    pub(crate) fn heading(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    /// Secondary text: hints, units, stale data.
    pub(crate) fn dim(self) -> Style {
        self.fg(Color::DarkGray).add_modifier(Modifier::DIM)
    }

    /// Healthy: connected, active.
    pub(crate) fn good(self) -> Style {
        self.fg(Color::Green)
    }

    /// In between: reconnecting, draining.
    pub(crate) fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }

    /// Broken: down, failed, errors.
    pub(crate) fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// Keys in the footer and help.
    pub(crate) fn key(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// The selected row of the focused table.
    pub(crate) fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    /// The selected row of the table without focus.
    pub(crate) fn selected_unfocused(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }

    /// Bars and sparklines.
    pub(crate) fn chart(self) -> Style {
        self.fg(Color::Cyan)
    }

    /// Borders of popups and sections.
    pub(crate) fn border(self) -> Style {
        self.fg(Color::DarkGray)
    }

    /// The banner when the cloud agent cannot be reached.
    pub(crate) fn banner(self) -> Style {
        if self.color {
            Style::new().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_when_set_and_not_empty() {
        let env = |value: Option<&str>| {
            let value = value.map(str::to_owned);
            Theme::from_env(move |k| if k == "NO_COLOR" { value.clone() } else { None })
        };
        assert_eq!(env(Some("1")), Theme::new(false));
        assert_eq!(env(Some("")), Theme::new(true));
        assert_eq!(env(None), Theme::new(true));
        let plain = Theme::new(false);
        for style in [plain.title(), plain.good(), plain.bad(), plain.banner(), plain.dim()] {
            assert_eq!((style.fg, style.bg), (None, None), "{style:?}");
        }
        assert_eq!(Theme::new(true).good().fg, Some(Color::Green));
    }
}
