//! The terminal UI: live edges and mappings, and changes to them.
//!
//! # Layout
//! - `app`: the state, the [`app::Action`]s that change it and the
//!   [`app::Request`]s it makes; `update` applies actions, `outcome` the
//!   answers of the cloud agent.
//! - `keys`: key presses to actions, per mode (the help text too).
//! - `form`, `enrol`: the add-mapping and enrol forms and their validation.
//! - `events`: the newest events the events view shows (`E`).
//! - `order`: which rows the tables show, and in what order (filter,
//!   sort, problems only), and the page that holds the selection.
//! - `view`: drawing, a pure function of the state.
//! - `synthetic`, `measure`: a made-up fleet of any size, and what the
//!   TUI costs on it (`relayctl measure-tui`).
//! - `worker`: the snapshot poller and the threads that make changes.
//! - `theme`: colours (off with `NO_COLOR`); human units come from
//!   `crate::format`.
//!
//! The loop here owns the terminal: it waits briefly for keys, applies
//! what the workers sent, ticks the clock once a second, and redraws when
//! something changed.

mod app;
mod enrol;
mod events;
mod form;
mod keys;
mod measure;
mod order;
mod outcome;
mod synthetic;
mod theme;
mod update;
mod view;
mod worker;

#[cfg(test)]
mod behaviour;
#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod tests;

use std::io::{IsTerminal, Stdout, stdout};
use std::panic::PanicHookInfo;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use anyhow::Context;
use crossterm::cursor::Show;
use crossterm::event::{self, Event};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use self::app::{Action, App, Request};
use self::theme::Theme;
use crate::client::ControlClient;

/// `relayctl measure-tui`: prints what the TUI costs at a fleet's size.
pub(crate) fn measure(
    edges: usize,
    mappings: usize,
    rounds: usize,
    output: crate::cli::Output,
) -> std::process::ExitCode {
    match measure::run(edges, mappings, rounds) {
        Ok(cost) if output == crate::cli::Output::Json => {
            println!("{}", serde_json::to_string(&cost).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Ok(cost) => {
            print!("{}", measure::render(&cost));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayctl: measuring the TUI: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Options for the TUI.
#[derive(Debug, Clone, Default)]
pub(crate) struct TuiOptions {
    /// A line shown under the header, e.g. the demo's "try: curl ..." hint.
    pub(crate) hint: Option<String>,
}

/// How long to wait for a key before looking at the channels again.
const POLL: Duration = Duration::from_millis(100);

/// Runs the TUI until the user quits.
///
/// # Errors
/// When the terminal cannot be set up or drawn on (not a terminal).
pub(crate) fn run(client: ControlClient, options: TuiOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "relayctl tui draws on a terminal, and stdout is not one; use `relayctl status` or \
         `relayctl mappings list` in scripts"
    );
    let theme = Theme::from_env(|key| std::env::var(key).ok());
    let mut app = App::new(&client.endpoint(), options.hint, theme, worker::unix_ms());
    let (tx, rx) = mpsc::channel();
    let mut screen = Screen::enter()?;
    let watched = worker::Watched::default();
    let wake = worker::spawn_poller(client.clone(), tx.clone(), Arc::clone(&watched))?;
    let io = Channels { client, tx, rx, wake, watched };
    let result = event_loop(&mut screen.terminal, &mut app, &io);
    drop(screen);
    for note in &app.exit_notes {
        println!("{note}");
    }
    result
}

struct Channels {
    client: ControlClient,
    tx: Sender<Action>,
    rx: Receiver<Action>,
    wake: Sender<()>,
    watched: worker::Watched,
}

impl Channels {
    /// Tells the poller which mapping's series to fetch; fetches at once
    /// when that changed, so the detail pane fills without waiting.
    fn watch(&self, app: &App) {
        let wanted = app.selected_mapping().map(|m| m.spec.name.clone());
        let Ok(mut watched) = self.watched.lock() else { return };
        if *watched != wanted {
            *watched = wanted;
            let _ = self.wake.send(());
        }
    }
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    io: &Channels,
) -> anyhow::Result<()> {
    let mut dirty = true;
    let mut second = 0;
    loop {
        if dirty {
            terminal.draw(|frame| view::draw(frame, app)).context("drawing")?;
            dirty = false;
        }
        let mut wait = POLL;
        while event::poll(wait).context("reading the terminal")? {
            wait = Duration::ZERO;
            match event::read().context("reading the terminal")? {
                Event::Key(key) => {
                    if let Some(action) = keys::action(app, key) {
                        dispatch(app, action, io)?;
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(action) = io.rx.try_recv() {
            dispatch(app, action, io)?;
            dirty = true;
        }
        let now = worker::unix_ms();
        if now / 1000 != second {
            second = now / 1000;
            app.update(Action::Tick(now));
            dirty = true;
        }
        if app.quit {
            return Ok(());
        }
        io.watch(app);
    }
}

/// Applies an action and starts the call it asks for.
fn dispatch(app: &mut App, action: Action, io: &Channels) -> anyhow::Result<()> {
    match app.update(action) {
        None => Ok(()),
        Some(Request::Refresh) => {
            let _ = io.wake.send(());
            Ok(())
        }
        Some(request) => worker::perform(&io.client, request, &io.tx),
    }
}

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The terminal in raw mode on the alternate screen, put back as it was
/// when dropped, and by a panic hook if anything panics meanwhile.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    previous_hook: Option<Arc<Hook>>,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen").finish_non_exhaustive()
    }
}

/// Leaves raw mode and the alternate screen, and shows the cursor.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, Show);
}

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
        enable_raw_mode().context("relayctl tui needs a terminal (cannot enter raw mode)")?;
        let previous: Arc<Hook> = Arc::new(std::panic::take_hook());
        let chained = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            restore();
            chained(info);
        }));
        // From here on, dropping the screen restores the terminal and hook.
        let mut screen = Screen { terminal, previous_hook: Some(previous) };
        execute!(stdout(), EnterAlternateScreen).context("entering the alternate screen")?;
        screen.terminal.hide_cursor().context("hiding the cursor")?;
        screen.terminal.clear().context("clearing the screen")?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
        if let Some(previous) = self.previous_hook.take() {
            drop(std::panic::take_hook());
            match Arc::try_unwrap(previous) {
                Ok(hook) => std::panic::set_hook(hook),
                Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
            }
        }
    }
}
