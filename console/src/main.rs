//! `relayctl`: the operator's console for hybrid relay.
//!
//! # Layout
//! - `cli`: the command line (clap), shared with batch files.
//! - `settings`: where the endpoint and token come from.
//! - `client`: a blocking client of the cloud agent's control API.
//! - `commands`: the subcommands and their table / JSON output;
//!   `cluster`: the nodes commands and the per-node figures of a cluster;
//!   `fleet`: adding edges and rotating tokens, which print a new token.
//! - `format`, `table`: human units and aligned tables, shared by the
//!   subcommands and the TUI.
//! - `batch`: `relayctl batch FILE`: parse all, then apply atomically.
//! - `tui`: the terminal UI.
//! - `demo`: agents and a sample service on loopback, then the TUI.

mod batch;
mod cli;
mod client;
mod cluster;
mod commands;
mod demo;
mod events;
mod fleet;
mod format;
mod settings;
mod table;
mod tui;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        None if std::io::stdout().is_terminal() => Command::Tui,
        None => {
            eprintln!(
                "relayctl: no command given and stdout is not a terminal; see `relayctl --help`"
            );
            return ExitCode::from(1);
        }
    };
    if let Command::Demo = command {
        return demo::run();
    }
    if let Command::MeasureTui { edges, mappings, rounds } = command {
        return tui::measure(edges, mappings, rounds, cli.global.output());
    }
    let settings = match settings::resolve(&cli.global) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("relayctl: {e:#}");
            return ExitCode::from(1);
        }
    };
    let verbose = cli.global.verbose && !matches!(command, Command::Tui);
    let client = client::ControlClient::new(&settings.endpoints, settings.token).verbose(verbose);
    commands::run(&client, command, cli.global.output())
}
