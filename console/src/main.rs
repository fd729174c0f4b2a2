//! `relayctl`: the operator's console for hybrid relay.
//!
//! For now it offers the local demo; the TUI, the scripting subcommands and
//! batch mode build on the cloud agent's control API.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The operator's console for hybrid relay.
#[derive(Debug, Parser)]
#[command(name = "relayctl", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a cloud agent, an edge agent and a sample service on loopback,
    /// connected by a mapping, until Ctrl-C.
    Demo,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Demo => demo::run(),
    }
}
