//! Keys to [`Action`]s, depending on what has the keyboard. The real loop
//! and the tests both go through [`action`].

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{Action, App, Confirm, Mode};

/// Every key, for the help screen: (keys, what they do).
pub(crate) const HELP: &[(&str, &str)] = &[
    ("In the main view", ""),
    ("↑↓jk PgUp PgDn gG", "select; a page at a time; first / last"),
    ("Tab", "switch between mappings, edges and nodes"),
    ("Enter", "the selected edge's view: tunnels, mappings, events"),
    ("a  n", "add a mapping / enrol a new site: a one-time code"),
    ("d", "drain the selected mapping (asks for a deadline)"),
    ("x  Delete", "remove the selected mapping now (asks first)"),
    ("D", "drain or undrain the selected edge or node (asks first)"),
    ("R", "revoke the selected edge: cut it off now (asks first)"),
    ("/  Esc", "filter edges and mappings (Enter keeps) / clear"),
    ("s  p", "sort: name, health, throughput, errors / problems only"),
    ("E", "events: ↑ ↓ PgUp PgDn scroll, E or Esc back"),
    ("?  q  Ctrl-C", "this help / quit"),
    ("", ""),
    ("In the add form", ""),
    ("Tab ↓  Shift-Tab ↑", "next / previous field"),
    ("← →", "choose the edge"),
    ("Enter", "next field; on the last one, add"),
    ("Ctrl-S", "add from any field"),
    ("Ctrl-U  Esc", "clear the field / cancel"),
    // No blank line here: the whole screen fits 80x24.
    ("In a confirmation", ""),
    ("Enter y  Esc n", "go ahead / cancel"),
];

/// The action for a key press, or `None` when the key means nothing here.
pub(crate) fn action(app: &App, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
        return Some(Action::Quit);
    }
    match &app.mode {
        Mode::Normal => normal(key.code),
        Mode::Help => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            _ => Some(Action::Cancel),
        },
        Mode::Filter => text(key.code, ctrl).or(match key.code {
            KeyCode::Up => Some(Action::Up),
            KeyCode::Down => Some(Action::Down),
            _ => None,
        }),
        Mode::Events => match key.code {
            KeyCode::Char(' ') => Some(Action::PageDown),
            code => normal(code),
        },
        Mode::Edge(_) => normal(key.code),
        Mode::Add(_) | Mode::Enrol(_) => form(key.code, ctrl),
        Mode::Enrolled(_) => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            _ => Some(Action::Cancel),
        },
        Mode::Confirm(confirm) => {
            let typing = matches!(confirm, Confirm::Drain { .. } | Confirm::DrainNode { .. });
            match key.code {
                KeyCode::Enter | KeyCode::Char('y' | 'Y') => Some(Action::Confirm),
                KeyCode::Esc | KeyCode::Char('n' | 'N') => Some(Action::Cancel),
                _ if typing => text(key.code, ctrl),
                _ => None,
            }
        }
    }
}

fn normal(code: KeyCode) -> Option<Action> {
    Some(match code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::Tab | KeyCode::BackTab => Action::ToggleFocus,
        KeyCode::Char('a') => Action::OpenAdd,
        KeyCode::Char('n') => Action::OpenEnrol,
        KeyCode::Char('d') => Action::OpenDrain,
        KeyCode::Char('x') | KeyCode::Delete => Action::OpenRemove,
        KeyCode::Char('D') => Action::OpenDrainEdgeOrNode,
        KeyCode::Char('R') => Action::OpenRevoke,
        KeyCode::Char('/') => Action::OpenFilter,
        KeyCode::Char('?') => Action::OpenHelp,
        KeyCode::Char('E') => Action::OpenEvents,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::First,
        KeyCode::End | KeyCode::Char('G') => Action::Last,
        KeyCode::Char('s') => Action::CycleSort,
        KeyCode::Char('p') => Action::ToggleProblems,
        KeyCode::Enter => Action::OpenEdge,
        KeyCode::Esc => Action::Cancel,
        _ => return None,
    })
}

/// Editing keys of a one-line text field.
fn text(code: KeyCode, ctrl: bool) -> Option<Action> {
    match code {
        KeyCode::Char('u') if ctrl => Some(Action::ClearInput),
        KeyCode::Char(_) if ctrl => None,
        KeyCode::Char(c) => Some(Action::Input(c)),
        KeyCode::Backspace => Some(Action::Backspace),
        KeyCode::Enter => Some(Action::Confirm),
        KeyCode::Esc => Some(Action::Cancel),
        _ => None,
    }
}

fn form(code: KeyCode, ctrl: bool) -> Option<Action> {
    match code {
        KeyCode::Char('s') if ctrl => Some(Action::Submit),
        KeyCode::Tab | KeyCode::Down => Some(Action::NextField),
        KeyCode::BackTab | KeyCode::Up => Some(Action::PrevField),
        KeyCode::Left => Some(Action::Left),
        KeyCode::Right => Some(Action::Right),
        _ => text(code, ctrl),
    }
}
