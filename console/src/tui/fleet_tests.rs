//! The console at a thousand sites: paging, sorting, "problems only", a
//! filter that reaches edges, and an edge's own view; screens compared
//! with the snapshots in `snapshots/` like `tests`.

use crossterm::event::{KeyCode, KeyModifiers};

use super::app::{Action, App, Focus, Mode};
use super::fixtures::{self, NOW};
use super::tests::{key, press, render, text, typed};
use super::theme::Theme;

/// An app that has received a fleet of 1,000 edges and 5,000 mappings.
fn fleet_app() -> App {
    let mut app = App::new(fixtures::ENDPOINT, None, Theme::new(false), NOW - 400);
    let snapshot = super::synthetic::fleet(1_000, 5_000, NOW - 400);
    app.update(Action::Snapshot { result: Ok(snapshot), now_ms: NOW - 400 });
    app.update(Action::Tick(NOW));
    app
}

fn screen(app: &App, size: (u16, u16)) -> String {
    text(render(app, size).backend().buffer())
}

fn selected(app: &App) -> Option<&str> {
    app.selected_mapping().map(|m| m.spec.name.as_str())
}

#[test]
fn a_thousand_sites_page_by_page() {
    let mut app = fleet_app();
    let first = screen(&app, (80, 24));
    insta::assert_snapshot!("fleet_main_80x24", first);
    insta::assert_snapshot!("fleet_main_120x40", screen(&app, (120, 40)));
    // The last frame drawn recorded its page: PgDn moves by one page.
    assert_eq!(screen(&app, (80, 24)), first);
    let rows = app.page_rows.get()[2];
    assert!(rows >= 3, "{rows} mapping rows at 80x24");
    press(&mut app, KeyCode::PageDown, KeyModifiers::NONE);
    assert_eq!(selected(&app), Some(format!("svc-{:05}", rows + 1).as_str()));
    let second = screen(&app, (80, 24));
    let title = |s: &str| s.lines().find(|l| l.contains("Mappings")).unwrap_or("").to_owned();
    assert!(title(&second).contains(&format!("{}–{} of 5000", rows + 1, 2 * rows)), "{second}");
    key(&mut app, 'G');
    assert_eq!(selected(&app), Some("svc-05000"));
    assert!(title(&screen(&app, (80, 24))).contains("of 5000"));
    key(&mut app, 'g');
    assert_eq!(selected(&app), Some("svc-00001"));
    assert_eq!(screen(&app, (80, 24)), first, "back on the first page");
}

#[test]
fn sorting_and_problems_only_at_a_thousand_sites() {
    let mut app = fleet_app();
    key(&mut app, 's');
    assert_eq!(app.sort.word(), "health");
    // The worst first (failed, or its edge revoked), then by name.
    let top = app.visible_mappings()[0];
    let worst = |m: &api::MappingView| m.state == api::MappingState::Failed || m.edge_revoked;
    assert!(worst(top), "{}", top.spec.name);
    let first_fine = app.visible_mappings().iter().position(|m| !worst(m)).unwrap_or(0);
    assert!(app.visible_mappings()[first_fine..].iter().all(|m| !worst(m)), "worst all first");
    key(&mut app, 's');
    let busiest = app.visible_mappings()[0];
    let rate = |m: &api::MappingView| m.throughput_in_bps + m.throughput_out_bps;
    assert!(app.visible_mappings().iter().all(|m| rate(m) <= rate(busiest)));
    key(&mut app, 's');
    key(&mut app, 's');
    assert_eq!(app.sort.word(), "name", "the cycle comes back to name");

    key(&mut app, 'p');
    let problems = app.visible_mappings().len();
    assert!(problems > 0 && problems < 5_000, "{problems} of 5000");
    assert!(app.visible_edges().iter().all(|e| super::order::edge_problem(e).is_some()));
    insta::assert_snapshot!("fleet_problems_80x24", screen(&app, (80, 24)));
    key(&mut app, 'p');
    assert_eq!(app.visible_mappings().len(), 5_000);
}

#[test]
fn the_filter_reaches_edges_and_their_groups_mappings() {
    let mut app = fleet_app();
    key(&mut app, '/');
    typed(&mut app, "site-0042");
    press(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    let edges: Vec<&str> = app.visible_edges().iter().map(|e| e.id.as_str()).collect();
    assert_eq!(edges, ["site-0042"]);
    let mappings = app.visible_mappings();
    // Its own mappings, and those on its group region-04.
    assert!(mappings.iter().any(|m| m.spec.edge == "site-0042"));
    assert!(mappings.iter().any(|m| m.spec.edge == "region-04"), "group mappings reach it too");
    assert!(mappings.iter().all(|m| m.spec.edge == "site-0042" || m.spec.edge == "region-04"));
}

#[test]
fn an_edge_view_shows_its_tunnels_mappings_and_events() {
    let mut app = fixtures::app();
    app.update(Action::Events(fixtures::events(12)));
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    assert_eq!(app.focus, Focus::Edges);
    press(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    assert_eq!(app.mode, Mode::Edge("site-a".into()));
    insta::assert_snapshot!("edge_view_80x24", screen(&app, (80, 24)));
    insta::assert_snapshot!("edge_view_120x40", screen(&app, (120, 40)));
    key(&mut app, 'j');
    assert_eq!(app.mode, Mode::Edge("site-b".into()), "↓ goes on to the next edge");
    let b = screen(&app, (80, 24));
    assert!(b.contains("no tunnel up") && b.contains("down"), "{b}");
    press(&mut app, KeyCode::Esc, KeyModifiers::NONE);
    assert_eq!(
        (app.mode.clone(), app.selected_edge().map(|e| e.id.clone())),
        (Mode::Normal, Some("site-b".into()))
    );
}

#[test]
fn an_edge_counts_the_mappings_of_its_groups() {
    let mut snapshot = fixtures::snapshot();
    snapshot.edges[1].groups = vec!["east".into()];
    snapshot.mappings[2].spec.edge = "east".into();
    let mut app = App::new(fixtures::ENDPOINT, None, Theme::new(false), NOW);
    app.update(Action::Snapshot { result: Ok(snapshot), now_ms: NOW });
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    key(&mut app, 'j');
    key(&mut app, 'R');
    let Mode::Confirm(super::app::Confirm::RevokeEdge { id, mappings }) = &app.mode else {
        panic!("no revoke confirmation: {:?}", app.mode)
    };
    // ssh-legacy on it by name, and web on its group.
    assert_eq!((id.as_str(), *mappings), ("site-b", 2));
}

fn ticket() -> api::EnrolmentTicket {
    let code = "hr1.q3JxYk3yN8m1cU1xJm4C1w.Zz9t7WkX0kq2b4d2bXo0q7J8fP1aT8VmQeQm3xq8pV0";
    api::EnrolmentTicket {
        edge_id: "branch-7".into(),
        code: code.into(),
        expires_unix_ms: NOW + 15 * 60_000,
        cloud_url: "wss://relay.example.com:7000/tunnel".into(),
        command: format!(
            "relay-edge enroll --cloud wss://relay.example.com:7000/tunnel --code {code} --dir /etc/relay"
        ),
    }
}

#[test]
fn enrolling_a_site_from_the_tui() {
    use super::app::Request;
    use super::enrol::EnrolRequest;
    let mut app = fixtures::app();
    key(&mut app, 'n');
    assert!(matches!(app.mode, Mode::Enrol(_)));
    // Enter on an empty name: the field says why, nothing is sent.
    assert_eq!(press(&mut app, KeyCode::Enter, KeyModifiers::NONE), None);
    press(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    assert_eq!(press(&mut app, KeyCode::Enter, KeyModifiers::NONE), None);
    let Mode::Enrol(form) = &app.mode else { panic!("form closed") };
    assert_eq!(form.error.as_ref().map(|e| e.0), Some(super::enrol::EnrolField::Name));
    insta::assert_snapshot!("enrol_form_error_80x24", screen(&app, (80, 24)));
    typed(&mut app, "branch-7");
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    typed(&mut app, "east");
    press(&mut app, KeyCode::Tab, KeyModifiers::NONE);
    press(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    typed(&mut app, "1h");
    let request = press(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    let want = EnrolRequest { id: "branch-7".into(), group: Some("east".into()), ttl_secs: 3600 };
    assert_eq!(request, Some(Request::Enroll(want.clone())));
    assert_eq!(app.busy.as_deref(), Some("making an enrolment code for branch-7…"));

    // Refused: the form stays, with the reason.
    let refused = crate::client::ClientError::Api {
        status: 409,
        code: "conflict".into(),
        error: "edge branch-7 is in group west".into(),
    };
    app.update(Action::Enrolled { request: want.clone(), result: Err(refused) });
    let Mode::Enrol(form) = &app.mode else { panic!("form closed") };
    assert!(form.server_error.as_deref().is_some_and(|e| e.contains("group west")));
    // Made: the command, whole, in its dialog; kept for the exit.
    press(&mut app, KeyCode::Char('s'), KeyModifiers::CONTROL);
    let after = app.update(Action::Enrolled { request: want, result: Ok(ticket()) });
    assert_eq!(after, Some(Request::Refresh), "the new edge shows at once");
    let shot = screen(&app, (80, 24));
    // The dialog's lines, between its borders, joined.
    let inside = |l: &str| {
        let (Some(a), Some(b)) = (l.find('│'), l.rfind('│')) else { return String::new() };
        l.get(a + '│'.len_utf8()..b).unwrap_or_default().trim().to_owned()
    };
    let joined: String = shot.lines().map(inside).collect();
    assert!(joined.contains(&ticket().command), "the whole command:\n{shot}");
    insta::assert_snapshot!("enrolled_80x24", shot);
    assert_eq!(app.exit_notes.len(), 1);
    assert!(app.exit_notes[0].contains(&ticket().command));
    press(&mut app, KeyCode::Esc, KeyModifiers::NONE);
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.busy, None);
}

#[test]
fn another_endpoints_events_are_not_hidden_by_the_first_ones() {
    let mut app = fixtures::app();
    app.update(Action::Events(fixtures::events(30)));
    assert_eq!(app.events.len(), 30);
    // Another node answers now: its log starts lower.
    app.update(Action::Endpoint("http://127.0.0.1:7071".into()));
    app.update(Action::Events(fixtures::events(3)));
    assert_eq!(app.events.len(), 3, "the other node's events, not the first one's");
    // The same endpoint again keeps what it holds.
    app.update(Action::Endpoint("http://127.0.0.1:7071".into()));
    assert_eq!(app.events.len(), 3);
}
