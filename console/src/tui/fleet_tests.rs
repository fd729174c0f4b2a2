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
