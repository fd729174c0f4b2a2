//! Key handling and state changes, through `keys::action` and
//! `App::update` as the real loop does.

use api::{MappingSource, MappingState, MappingView};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{Action, Focus, Link, Mode, Request};
use super::fixtures;
use super::keys;
use super::tests::{key, press, render, text, typed};
use crate::client::ClientError;

fn tab(app: &mut super::app::App) -> Option<Request> {
    press(app, KeyCode::Tab, KeyModifiers::NONE)
}

fn enter(app: &mut super::app::App) -> Option<Request> {
    press(app, KeyCode::Enter, KeyModifiers::NONE)
}

fn esc(app: &mut super::app::App) -> Option<Request> {
    press(app, KeyCode::Esc, KeyModifiers::NONE)
}

/// Fills the form: name, listen, (edge as chosen), target, allow.
fn fill(app: &mut super::app::App, name: &str, listen: &str, target: &str) {
    typed(app, name);
    tab(app);
    typed(app, listen);
    tab(app);
    press(app, KeyCode::Right, KeyModifiers::NONE);
    tab(app);
    typed(app, target);
    tab(app);
}

fn view_of(spec: &api::MappingSpec) -> MappingView {
    let mut view = fixtures::snapshot().mappings.pop().expect("a mapping");
    view.spec = spec.clone();
    view.bound = Some(spec.listen.clone());
    view.source = MappingSource::Runtime;
    view.state = MappingState::Active;
    view
}

#[test]
fn a_opens_the_form_and_esc_closes_it() {
    let mut app = fixtures::app();
    key(&mut app, 'a');
    assert!(matches!(app.mode, Mode::Add(_)));
    typed(&mut app, "q?dxj");
    assert!(!app.quit, "q is text in the form");
    esc(&mut app);
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn an_invalid_field_blocks_submit() {
    let mut app = fixtures::app();
    key(&mut app, 'a');
    fill(&mut app, "web2", "0.0.0.0:8081", "db");
    tab(&mut app); // past allow to host, the last field
    assert_eq!(enter(&mut app), None, "Enter on the last field submits, but the target is bad");
    let Mode::Add(form) = &app.mode else { panic!("form closed: {:?}", app.mode) };
    let (field, message) = form.error.clone().expect("an error");
    assert_eq!((field, form.focus), (super::form::Field::Target, field));
    assert!(message.contains("missing port"), "{message}");
    assert_eq!(app.busy, None);
}

#[test]
fn a_valid_form_adds_and_selects_the_new_mapping() {
    let mut app = fixtures::app();
    key(&mut app, 'a');
    fill(&mut app, "web2", "0.0.0.0:8081", "db.internal:5432");
    typed(&mut app, "10.0.0.0/8");
    tab(&mut app);
    typed(&mut app, "web2.example.com");
    let Some(Request::Add(spec)) = enter(&mut app) else { panic!("no add request") };
    assert_eq!(spec.host.as_deref(), Some("web2.example.com"));
    assert_eq!(spec.edge, "site-b", "→ picked the second edge");
    assert_eq!(spec.allow, ["10.0.0.0/8"]);
    assert_eq!(app.busy.as_deref(), Some("adding web2…"));
    assert!(text(render(&app, (80, 24)).backend().buffer()).contains("adding web2…"));
    assert_eq!(enter(&mut app), None, "no second submit while one is out");
    // The agent refuses: the form stays, with the values and the reason.
    let refused =
        ClientError::Api { status: 409, code: "bind_failed".into(), error: "in use".into() };
    let request = Request::Add(spec.clone());
    app.update(Action::Finished { request: request.clone(), result: Err(refused) });
    let Mode::Add(form) = &app.mode else { panic!("form closed") };
    assert_eq!(form.server_error.as_deref(), Some("in use (409 bind_failed)"));
    assert_eq!(form.value(super::form::Field::Name), "web2");
    // Submitted again, it works.
    assert_eq!(press(&mut app, KeyCode::Char('s'), KeyModifiers::CONTROL), Some(request.clone()));
    let after =
        app.update(Action::Finished { request, result: Ok(Some(Box::new(view_of(&spec)))) });
    assert_eq!(after, Some(Request::Refresh));
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.selected_mapping().map(|m| m.spec.name.as_str()), Some("web2"));
    assert_eq!(app.status.as_ref().map(|s| s.text.as_str()), Some("added web2 on 0.0.0.0:8081"));
    assert_eq!(app.busy, None);
}

#[test]
fn d_then_enter_drains_with_the_deadline() {
    let mut app = fixtures::app();
    key(&mut app, 'j');
    key(&mut app, 'j');
    key(&mut app, 'd');
    assert_eq!(enter(&mut app), Some(Request::Drain { name: "web".into(), deadline_secs: 30 }));
    assert_eq!(app.mode, Mode::Normal);

    key(&mut app, 'd');
    press(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    typed(&mut app, "5x");
    assert_eq!(key(&mut app, 'y'), None, "a bad deadline sends nothing");
    let Mode::Confirm(super::app::Confirm::Drain { error, .. }) = &app.mode else { panic!() };
    assert!(error.as_deref().unwrap_or("").contains("invalid deadline \"5x\""), "{error:?}");
    press(&mut app, KeyCode::Backspace, KeyModifiers::NONE);
    typed(&mut app, "m");
    assert_eq!(key(&mut app, 'y'), Some(Request::Drain { name: "web".into(), deadline_secs: 300 }));

    key(&mut app, 'd');
    assert_eq!(key(&mut app, 'n'), None);
    assert_eq!(app.mode, Mode::Normal, "n cancels");
}

#[test]
fn a_draining_mapping_is_not_drained_twice() {
    let mut app = fixtures::app();
    assert_eq!(app.selected_mapping().map(|m| m.spec.name.as_str()), Some("db"));
    key(&mut app, 'd');
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.status.as_ref().map(|s| s.text.as_str()), Some("db is already draining"));
}

#[test]
fn x_and_delete_remove_after_asking() {
    let mut app = fixtures::app();
    key(&mut app, 'x');
    assert_eq!(esc(&mut app), None);
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, KeyCode::Delete, KeyModifiers::NONE);
    assert_eq!(enter(&mut app), Some(Request::Remove { name: "db".into() }));
    let result = app.update(Action::Finished {
        request: Request::Remove { name: "db".into() },
        result: Ok(None),
    });
    assert_eq!(result, Some(Request::Refresh));
    assert!(app.visible_mappings().iter().all(|m| m.spec.name != "db"), "gone at once");
}

#[test]
fn shift_d_drains_the_selected_edge() {
    let mut app = fixtures::app();
    press(&mut app, KeyCode::Char('D'), KeyModifiers::SHIFT);
    assert_eq!(app.mode, Mode::Normal, "mappings focused: D only explains");
    tab(&mut app);
    assert_eq!(app.focus, Focus::Edges);
    key(&mut app, 'j');
    press(&mut app, KeyCode::Char('D'), KeyModifiers::SHIFT);
    assert!(matches!(app.mode, Mode::Confirm(super::app::Confirm::DrainEdge { .. })));
    assert_eq!(key(&mut app, 'y'), Some(Request::DrainEdge { id: "site-b".into() }));
    let failed = ClientError::Unreachable { endpoint: "x".into(), reason: "down".into() };
    app.update(Action::Finished {
        request: Request::DrainEdge { id: "site-b".into() },
        result: Err(failed),
    });
    let status = app.status.clone().expect("status");
    assert!(status.error && status.text.starts_with("could not drain edge site-b"), "{status:?}");
}

#[test]
fn shift_d_on_a_drained_edge_undrains_it() {
    let mut app = fixtures::app();
    app.snapshot.as_mut().expect("fixture snapshot").edges[1].draining = true;
    tab(&mut app);
    key(&mut app, 'j');
    press(&mut app, KeyCode::Char('D'), KeyModifiers::SHIFT);
    assert!(matches!(app.mode, Mode::Confirm(super::app::Confirm::UndrainEdge { .. })));
    assert_eq!(key(&mut app, 'y'), Some(Request::UndrainEdge { id: "site-b".into() }));
    app.update(Action::Finished {
        request: Request::UndrainEdge { id: "site-b".into() },
        result: Ok(None),
    });
    let status = app.status.clone().expect("status");
    assert!(!status.error && status.text.contains("site-b takes new connections"), "{status:?}");
}

#[test]
fn slash_filters_and_esc_clears() {
    let mut app = fixtures::app();
    key(&mut app, '/');
    typed(&mut app, "SSH");
    let names: Vec<_> = app.visible_mappings().iter().map(|m| m.spec.name.clone()).collect();
    assert_eq!(names, ["ssh-legacy"]);
    enter(&mut app);
    assert_eq!((&app.mode, app.filter.as_str()), (&Mode::Normal, "SSH"), "Enter keeps it");
    esc(&mut app);
    assert_eq!(app.visible_mappings().len(), 3);
}

#[test]
fn help_opens_and_any_key_closes_it() {
    let mut app = fixtures::app();
    key(&mut app, '?');
    assert_eq!(app.mode, Mode::Help);
    key(&mut app, 'j');
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn q_and_ctrl_c_quit_and_releases_are_ignored() {
    let mut app = fixtures::app();
    let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
    release.kind = KeyEventKind::Release;
    assert_eq!(keys::action(&app, release), None);
    key(&mut app, 'q');
    assert!(app.quit);
    for open in ['a', '/', '?'] {
        let mut app = fixtures::app();
        key(&mut app, open);
        press(&mut app, KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert!(app.quit, "Ctrl-C quits from {open}");
    }
}

#[test]
fn a_failed_fetch_keeps_the_data_and_recovers() {
    let mut app = fixtures::app();
    let refused = ClientError::Unauthorized { endpoint: fixtures::ENDPOINT.into() };
    app.update(Action::Snapshot { result: Err(refused), now_ms: fixtures::NOW + 3_000 });
    assert!(app.stale() && app.snapshot.is_some());
    let shot = text(render(&app, (80, 24)).backend().buffer());
    assert!(shot.contains("the admin token was refused"), "{shot}");
    assert!(shot.contains("token refused") && shot.contains("stale"), "{shot}");
    app.update(Action::Snapshot {
        result: Ok(fixtures::snapshot()),
        now_ms: fixtures::NOW + 4_000,
    });
    assert_eq!(app.link, Link::Up);
    assert_eq!(app.data_age_ms(), 0);
}

#[test]
fn tab_reaches_the_nodes_only_in_a_cluster() {
    let mut alone = fixtures::app();
    tab(&mut alone);
    assert_eq!(alone.focus, Focus::Edges);
    tab(&mut alone);
    assert_eq!(alone.focus, Focus::Mappings, "no nodes panel alone");
    let mut app = fixtures::cluster_app();
    tab(&mut app);
    tab(&mut app);
    assert_eq!(app.focus, Focus::Nodes);
    tab(&mut app);
    assert_eq!(app.focus, Focus::Mappings);
}

#[test]
fn shift_d_drains_a_node_with_a_deadline_and_undrains_a_draining_one() {
    let mut app = fixtures::cluster_app();
    tab(&mut app);
    tab(&mut app);
    assert_eq!(app.selected_node().map(|n| n.id.as_str()), Some("a"));
    key(&mut app, 'D');
    assert!(
        matches!(&app.mode, Mode::Confirm(super::app::Confirm::DrainNode { id, open: 9, .. }) if id == "a")
    );
    press(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    typed(&mut app, "5x");
    assert_eq!(enter(&mut app), None, "a bad deadline sends nothing");
    let Mode::Confirm(super::app::Confirm::DrainNode { error, .. }) = &app.mode else { panic!() };
    assert!(error.as_deref().unwrap_or("").contains("invalid deadline"), "{error:?}");
    press(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    typed(&mut app, "90s");
    let request = enter(&mut app);
    assert_eq!(request, Some(Request::DrainNode { id: "a".into(), deadline_secs: 90 }));
    let refresh =
        app.update(Action::Finished { request: request.expect("drain"), result: Ok(None) });
    assert_eq!(refresh, Some(Request::Refresh));
    let status = app.status.as_ref().map(|s| s.text.clone()).unwrap_or_default();
    assert!(status.starts_with("draining node a: it reports not-ready"), "{status}");

    key(&mut app, 'j');
    key(&mut app, 'j');
    key(&mut app, 'D');
    assert_eq!(app.mode, Mode::Confirm(super::app::Confirm::UndrainNode { id: "c".into() }));
    assert_eq!(key(&mut app, 'y'), Some(Request::UndrainNode { id: "c".into() }));
    let error = ClientError::Api {
        status: 503,
        code: "store_unavailable".into(),
        error: "the store (etcd at http://127.0.0.1:2379) is unreachable".into(),
    };
    app.update(Action::Finished {
        request: Request::UndrainNode { id: "c".into() },
        result: Err(error),
    });
    let status = app.status.as_ref().expect("status");
    assert!(
        status.error && status.text.starts_with("could not undrain node c: the store"),
        "{status:?}"
    );
}

#[test]
fn the_header_follows_the_endpoint_that_answered() {
    let mut app = fixtures::cluster_app();
    app.update(Action::Endpoint("http://10.0.0.2:7070".into()));
    let shot = text(render(&app, (120, 40)).backend().buffer());
    assert!(shot.starts_with("hybrid relay │ http://10.0.0.2:7070 (node a) │"), "{shot}");
}

#[test]
fn an_add_that_failed_on_one_node_says_which() {
    let mut app = fixtures::cluster_app();
    let mut view = fixtures::cluster_snapshot().mappings.pop().expect("web");
    view.spec.name = "web2".into();
    let request = Request::Add(Box::new(view.spec.clone()));
    app.update(Action::Finished { request, result: Ok(Some(Box::new(view))) });
    let status = app.status.as_ref().expect("status");
    assert!(status.error, "a node failed it: {status:?}");
    assert!(
        status
            .text
            .starts_with("added web2 on 0.0.0.0:8080: active on 2/3; failed on c: cannot listen"),
        "{status:?}"
    );
}

#[test]
fn shift_r_revokes_the_selected_edge_after_asking() {
    let mut app = fixtures::app();
    press(&mut app, KeyCode::Char('R'), KeyModifiers::SHIFT);
    assert_eq!(app.mode, Mode::Normal, "mappings focused: R only explains");
    tab(&mut app);
    key(&mut app, 'j');
    press(&mut app, KeyCode::Char('R'), KeyModifiers::SHIFT);
    assert!(matches!(app.mode, Mode::Confirm(super::app::Confirm::RevokeEdge { .. })));
    assert_eq!(key(&mut app, 'n'), None, "n cancels");
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, KeyCode::Char('R'), KeyModifiers::SHIFT);
    assert_eq!(enter(&mut app), Some(Request::RevokeEdge { id: "site-b".into() }));
    app.update(Action::Finished {
        request: Request::RevokeEdge { id: "site-b".into() },
        result: Ok(None),
    });
    let status = app.status.clone().expect("status");
    assert!(!status.error && status.text.starts_with("revoked edge site-b"), "{status:?}");

    // A revoked edge is not asked about again.
    app.snapshot.as_mut().expect("fixture snapshot").edges[1].revoked = true;
    press(&mut app, KeyCode::Char('R'), KeyModifiers::SHIFT);
    assert_eq!(app.mode, Mode::Normal);
    let status = app.status.clone().expect("status");
    assert!(status.error && status.text.contains("already revoked"), "{status:?}");
}
