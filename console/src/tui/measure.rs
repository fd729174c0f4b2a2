//! What the TUI costs at a fleet's size (`relayctl measure-tui`, run by
//! `relay-bench`): the snapshot's JSON size (with every mapping's series,
//! the API's default, and with the one the TUI asks for), parsing it,
//! applying it
//! (the rows recomputed), drawing a frame, and the keys an operator
//! presses, each timed over several rounds on this machine. Drawing goes
//! to ratatui's in-memory backend, so the terminal's own speed is left
//! out; everything the console computes is in.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde::Serialize;

use super::app::{Action, App};
use super::theme::Theme;
use super::{keys, synthetic, view};

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TuiCost {
    pub(crate) edges: usize,
    pub(crate) mappings: usize,
    pub(crate) rounds: usize,
    /// The snapshot as `/v1/snapshot` sends it, bytes.
    pub(crate) snapshot_json_bytes: usize,
    /// With one mapping's series, as the TUI asks for it, bytes.
    pub(crate) snapshot_json_bytes_tui: usize,
    pub(crate) steps: Vec<Step>,
}

/// One step's time over the rounds, microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    pub(crate) name: &'static str,
    pub(crate) median_us: u64,
    pub(crate) max_us: u64,
}

/// Measures the console with `edges` edges and `mappings` mappings.
///
/// # Errors
/// When the snapshot cannot be encoded or drawn (a bug).
pub(crate) fn run(edges: usize, mappings: usize, rounds: usize) -> anyhow::Result<TuiCost> {
    let rounds = rounds.max(1);
    let now = super::worker::unix_ms();
    let snapshot = synthetic::fleet(edges, mappings, now);
    let json = serde_json::to_vec(&snapshot)?;
    let one_series = snapshot.series.iter().take(1).cloned().collect();
    let lean = serde_json::to_vec(&api::Snapshot { series: one_series, ..snapshot.clone() })?;
    let mut steps = Vec::new();
    let mut time = |name, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            f()?;
            samples.push(started.elapsed());
        }
        steps.push(step(name, samples));
        Ok(())
    };

    time("parse JSON, every series", &mut || {
        let _: api::Snapshot = serde_json::from_slice(&json)?;
        Ok(())
    })?;
    time("parse JSON, one series (the TUI's)", &mut || {
        let _: api::Snapshot = serde_json::from_slice(&lean)?;
        Ok(())
    })?;
    let mut app = App::new("http://127.0.0.1:7070", None, Theme::new(true), now);
    let mut copies = (0..rounds).map(|_| snapshot.clone()).collect::<Vec<_>>();
    time("apply snapshot (rows recomputed)", &mut || {
        let next = copies.pop().unwrap_or_else(|| snapshot.clone());
        app.update(Action::Snapshot { result: Ok(next), now_ms: now });
        Ok(())
    })?;
    for (width, height) in [(200, 50), (80, 24)] {
        let mut terminal = Terminal::new(TestBackend::new(width, height))?;
        let name = if width == 200 { "draw a frame 200x50" } else { "draw a frame 80x24" };
        time(name, &mut || {
            // A full redraw each round, as after a snapshot.
            terminal.draw(|frame| view::draw(frame, &app))?;
            Ok(())
        })?;
    }
    let mut terminal = Terminal::new(TestBackend::new(200, 50))?;
    terminal.draw(|frame| view::draw(frame, &app))?;
    let mut press = |code: KeyCode| -> anyhow::Result<()> {
        if let Some(action) = keys::action(&app, KeyEvent::new(code, KeyModifiers::NONE)) {
            app.update(action);
        }
        terminal.draw(|frame| view::draw(frame, &app))?;
        Ok(())
    };
    let mut time_key = |name, code: KeyCode| {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            press(code)?;
            samples.push(started.elapsed());
        }
        steps.push(step(name, samples));
        anyhow::Ok(())
    };
    time_key("key: PgDn and redraw", KeyCode::PageDown)?;
    time_key("key: sort (s) and redraw", KeyCode::Char('s'))?;
    time_key("key: problems only (p) and redraw", KeyCode::Char('p'))?;
    Ok(TuiCost {
        edges,
        mappings,
        rounds,
        snapshot_json_bytes: json.len(),
        snapshot_json_bytes_tui: lean.len(),
        steps,
    })
}

fn step(name: &'static str, mut samples: Vec<Duration>) -> Step {
    samples.sort();
    let us = |d: Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
    Step {
        name,
        median_us: samples.get(samples.len() / 2).map_or(0, |d| us(*d)),
        max_us: samples.last().map_or(0, |d| us(*d)),
    }
}

/// The figures as a table for people.
pub(crate) fn render(cost: &TuiCost) -> String {
    let mut out = format!(
        "relayctl TUI with {} edges and {} mappings ({} rounds each; \
         snapshot {} of JSON with every series, {} with the one the TUI asks for)\n",
        cost.edges,
        cost.mappings,
        cost.rounds,
        crate::format::decimal(cost.snapshot_json_bytes as u64),
        crate::format::decimal(cost.snapshot_json_bytes_tui as u64),
    );
    let width = cost.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &cost.steps {
        out.push_str(&format!(
            "  {:width$}  median {:>9}  max {:>9}\n",
            s.name,
            crate::format::micros(s.median_us),
            crate::format::micros(s.max_us),
        ));
    }
    out
}
