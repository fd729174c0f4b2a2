//! Whole screens rendered on a `TestBackend` and compared with the
//! snapshots in `snapshots/`, at 80x24 and at 120x40. Keys go through
//! `keys::action` and `App::update`, as in the real loop.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;

use super::app::{App, Request};
use super::fixtures;
use super::keys;
use super::theme::Theme;
use super::view;

const SIZES: [(u16, u16); 2] = [(80, 24), (120, 40)];

/// The screen as text, one line per row, trailing spaces cut.
pub(crate) fn text(buffer: &Buffer) -> String {
    let width = buffer.area.width as usize;
    let mut out = String::new();
    for row in buffer.content.chunks(width) {
        let line: String = row.iter().map(|cell| cell.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn render(app: &App, (width, height): (u16, u16)) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|frame| view::draw(frame, app)).expect("draw");
    terminal
}

fn screen(app: &App, size: (u16, u16)) -> String {
    text(render(app, size).backend().buffer())
}

/// Presses a key as the loop would; returns the request it made.
pub(crate) fn press(app: &mut App, code: KeyCode, modifiers: KeyModifiers) -> Option<Request> {
    let action = keys::action(app, KeyEvent::new(code, modifiers))?;
    app.update(action)
}

pub(crate) fn key(app: &mut App, c: char) -> Option<Request> {
    press(app, KeyCode::Char(c), KeyModifiers::NONE)
}

pub(crate) fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        assert_eq!(key(app, c), None);
    }
}

fn check(name: &str, app: &App) {
    for size in SIZES {
        let shot = screen(app, size);
        insta::assert_snapshot!(format!("{name}_{}x{}", size.0, size.1), shot);
    }
}

#[test]
fn main_view() {
    let mut app = fixtures::app();
    key(&mut app, 'j');
    key(&mut app, 'j');
    assert_eq!(app.selected_mapping().map(|m| m.spec.name.as_str()), Some("web"));
    check("main", &app);
}

#[test]
fn edges_focused() {
    let mut app = fixtures::app();
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    check("edges", &app);
}

#[test]
fn add_form_with_a_validation_error() {
    let mut app = fixtures::app();
    key(&mut app, 'a');
    typed(&mut app, "web2");
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    typed(&mut app, "0.0.0.0:8081");
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    typed(&mut app, "db");
    let request = press(&mut app, KeyCode::Char('s'), KeyModifiers::CONTROL);
    assert_eq!(request, None, "an invalid form sends nothing");
    check("add_form_error", &app);
    let mut terminal = render(&app, (80, 24));
    let cursor = terminal.get_cursor_position().expect("cursor");
    let row =
        text(terminal.backend().buffer()).lines().nth(cursor.y as usize).unwrap_or("").to_owned();
    assert!(row.contains("target") && row.contains("db"), "cursor on the target field: {row}");
}

#[test]
fn drain_confirmation() {
    let mut app = fixtures::app();
    key(&mut app, 'j');
    key(&mut app, 'j');
    key(&mut app, 'd');
    check("drain_confirm", &app);
}

#[test]
fn revoke_confirmation_over_a_revoked_edge_and_its_mapping() {
    let mut app = fixtures::app();
    let snapshot = app.snapshot.as_mut().expect("fixture snapshot");
    snapshot.edges[0].revoked = true;
    for m in snapshot.mappings.iter_mut().filter(|m| m.spec.edge == "site-a") {
        m.edge_revoked = true;
    }
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    key(&mut app, 'j');
    press(&mut app, KeyCode::Char('R'), KeyModifiers::SHIFT);
    check("revoke_confirm", &app);
}

#[test]
fn help_screen() {
    let mut app = fixtures::app();
    key(&mut app, '?');
    check("help", &app);
    let shot = screen(&app, (80, 24));
    for (keys, what) in keys::HELP {
        assert!(
            shot.contains(keys) && shot.contains(what),
            "help lacks {keys:?} {what:?}:\n{shot}"
        );
    }
}

#[test]
fn disconnected_shows_a_banner_over_stale_data() {
    let app = fixtures::disconnected();
    check("disconnected", &app);
    let shot = screen(&app, (120, 40));
    assert!(shot.contains("cannot reach the cloud agent at http://127.0.0.1:7070"), "{shot}");
    assert!(shot.contains("retrying every second"), "{shot}");
}

#[test]
fn colours_follow_no_color() {
    let mut app = fixtures::app();
    let colours = |app: &App| {
        let terminal = render(app, (120, 40));
        let buffer = terminal.backend().buffer().clone();
        buffer.content.iter().filter(|c| c.fg != Color::Reset || c.bg != Color::Reset).count()
    };
    assert_eq!(colours(&app), 0, "NO_COLOR: no colours at all");
    app.theme = Theme::new(true);
    assert!(colours(&app) > 100, "colours when allowed");
    let terminal = render(&app, (120, 40));
    let buffer = terminal.backend().buffer();
    let shot = text(buffer);
    let y = shot
        .lines()
        .position(|l| l.contains("site-a") && l.contains("connected"))
        .expect("site-a row");
    let x = shot.lines().nth(y).and_then(|l| l.find("connected")).expect("health");
    assert_eq!(buffer[(x as u16, y as u16)].fg, Color::Green, "connected is green");
}

#[test]
fn small_and_odd_sizes_do_not_panic() {
    let mut apps = vec![fixtures::app(), fixtures::disconnected()];
    for keys in ["a", "jjd", "x", "?", "/w"] {
        let mut app = fixtures::app();
        typed(&mut app, keys);
        apps.push(app);
    }
    let mut edges = fixtures::app();
    press(&mut edges, KeyCode::Tab, KeyModifiers::NONE);
    apps.push(edges);
    let connecting = App::new(
        fixtures::ENDPOINT,
        Some("try: curl http://127.0.0.1:1/".into()),
        Theme::new(false),
        0,
    );
    apps.push(connecting);
    for app in &apps {
        for size in [(1, 1), (10, 3), (30, 8), (40, 12), (60, 16), (79, 23), (200, 60)] {
            render(app, size);
        }
    }
}

#[test]
fn a_long_hint_wraps_instead_of_being_cut() {
    let mut app = fixtures::app();
    let hint = "try: curl http://127.0.0.1:41089/   (the demo mapping \"web\"; q quits and stops everything)";
    app.hint = Some(hint.into());
    let shot = screen(&app, (80, 24));
    assert!(shot.contains("q quits and stops\neverything)\n"), "wrapped at a space:\n{shot}");
    key(&mut app, 'x');
    press(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    let shot = screen(&app, (80, 24));
    assert!(shot.contains("removing db…") && !shot.contains("everything)"), "{shot}");
}

#[test]
fn an_edge_reported_version_is_shown_escaped() {
    let mut app = fixtures::app();
    let mut snapshot = fixtures::snapshot();
    snapshot.edges[0].version = Some("1\u{1b}]0;x\u{7}\u{202e}y".into());
    app.update(super::app::Action::Snapshot { result: Ok(snapshot), now_ms: fixtures::NOW });
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE); // the edge's detail shows its version
    let buffer = render(&app, (160, 40)).backend().buffer().clone();
    let hidden =
        buffer.content.iter().find(|c| c.symbol().contains(['\u{1b}', '\u{7}', '\u{202e}']));
    assert!(hidden.is_none(), "a raw control character reached the screen: {hidden:?}");
    let screen = text(&buffer);
    assert!(screen.contains("1\\u{1b}]0;x\\u{7}\\u{202e}y"), "{screen}");
}

#[test]
fn a_cluster_names_the_node_that_failed_a_mapping() {
    let mut app = fixtures::cluster_app();
    key(&mut app, 'j');
    key(&mut app, 'j');
    assert_eq!(app.selected_mapping().map(|m| m.spec.name.as_str()), Some("web"));
    check("cluster_main", &app);
    let shot = screen(&app, (120, 40));
    assert!(shot.contains("(node a)"), "the header names the node that answered:\n{shot}");
    let row = shot.lines().find(|l| l.starts_with("web ")).expect("web row");
    assert!(row.contains("active 2/3, failed on c"), "{row}");
    assert!(shot.contains("failed on c: cannot listen on 0.0.0.0:8080"), "{shot}");
    assert!(shot.contains("figures without b"), "the peer that did not answer:\n{shot}");
}

#[test]
fn a_cluster_nodes_panel_and_an_edge_links_to_the_nodes() {
    let mut app = fixtures::cluster_app();
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    check("cluster_edge", &app);
    let shot = screen(&app, (120, 40));
    assert!(shot.contains("tunnels to nodes: a 1 up · b 1 up · c none"), "{shot}");
    assert!(shot.contains("cannot reach node c: dial wss://c.relay.example:7000"), "{shot}");
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    key(&mut app, 'j');
    key(&mut app, 'j');
    assert_eq!(app.selected_node().map(|n| n.id.as_str()), Some("c"));
    check("cluster_nodes", &app);
    let shot = screen(&app, (120, 40));
    let row = shot.lines().find(|l| l.starts_with("b ")).expect("b row");
    assert!(row.ends_with("no answer"), "{row}");
    assert!(shot.contains("cannot serve web: cannot listen on 0.0.0.0:8080"), "{shot}");
    key(&mut app, 'k');
    let shot = screen(&app, (120, 40));
    assert!(
        shot.contains("its figures are not in the sums: no answer within 1s: timed out"),
        "{shot}"
    );
}

#[test]
fn drain_a_node_confirmation() {
    let mut app = fixtures::cluster_app();
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    key(&mut app, 'D');
    check("cluster_drain_node", &app);
}

#[test]
fn events_view_scrolls_and_keeps_its_place() {
    let mut app = fixtures::app();
    app.update(super::app::Action::Events(fixtures::events(40)));
    key(&mut app, 'E');
    check("events", &app);
    let shot = screen(&app, (120, 40));
    let first = shot.lines().nth(3).expect("the first event row");
    assert!(first.contains("mapping_drained") && first.contains("db"), "seq 40 on top: {first}");
    assert!(shot.contains("1 to 36 of 40"), "{shot}");
    key(&mut app, 'j');
    press(&mut app, KeyCode::PageDown, KeyModifiers::NONE);
    assert_eq!(app.events.scroll, 11);
    // New events do not move what is being read.
    let mut more = fixtures::events(41);
    app.update(super::app::Action::Events(more.split_off(40)));
    assert_eq!(app.events.scroll, 12);
    let shot = screen(&app, (80, 24));
    assert!(shot.contains("13 to 32 of 41"), "{shot}");
    key(&mut app, 'E');
    assert_eq!(app.mode, super::app::Mode::Normal, "E goes back");
    key(&mut app, 'E');
    press(&mut app, KeyCode::Esc, KeyModifiers::NONE);
    assert_eq!(app.mode, super::app::Mode::Normal, "and so does Esc");
}

#[test]
fn events_view_without_events() {
    let mut app = fixtures::app();
    key(&mut app, 'E');
    let shot = screen(&app, (80, 24));
    assert!(shot.contains("no events yet"), "{shot}");
}

#[test]
fn mappings_sharing_a_port_show_their_host_in_a_column_and_the_detail() {
    let mut app = fixtures::app();
    let plain = screen(&app, (160, 40));
    let header = plain.lines().find(|l| l.contains("listen")).expect("header");
    assert!(!header.contains("host"), "no host column without a shared port: {header}");
    let mut snapshot = fixtures::snapshot();
    for m in &mut snapshot.mappings {
        m.spec.host = Some(format!("{}.example.com", m.spec.name));
    }
    app.update(super::app::Action::Snapshot { result: Ok(snapshot), now_ms: fixtures::NOW });
    let shot = screen(&app, (160, 40));
    let header = shot.lines().find(|l| l.contains("listen")).expect("header");
    assert!(header.contains("host"), "{header}");
    let name = app.selected_mapping().map(|m| m.spec.name.clone()).expect("a selection");
    assert!(shot.contains(&format!("shares its address: takes host {name}.example.com")), "{shot}");
}
