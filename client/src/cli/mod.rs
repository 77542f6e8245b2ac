//! refreshctl: the command line of refreshd.

pub mod args;
mod boot;
mod commands;
pub mod exit;
mod format;
mod progress;
mod snapshots;
mod store;

use std::io::IsTerminal;

use clap::Parser;

pub use args::{Cli, Command};

use crate::client::Client;

/// Runs refreshctl with the process's arguments and returns its exit code (see [`exit`]).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints usage errors to stderr and --help/--version to stdout.
            let _ = err.print();
            return err.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return exit::FAILURE;
        }
    };
    let client = Client::new(cli.socket_path(std::env::var_os(args::SOCKET_ENV)));
    let clock = format::Clock::system();
    let paint = format::Paint::detect(std::io::stdout().is_terminal());
    match runtime.block_on(commands::run(cli.command, &client, &clock, paint)) {
        Ok(()) => exit::SUCCESS,
        // Whoever read our output has gone; there is no one to tell.
        Err(err) if exit::is_broken_pipe(&err) => exit::FAILURE,
        // Ctrl-C while waiting: not a failure, and the change goes on; say how to follow it.
        Err(err) if exit::interrupted(&err).is_some() => {
            if let Some(stopped) = exit::interrupted(&err) {
                eprintln!("{stopped}");
            }
            exit::INTERRUPTED
        }
        Err(err) => {
            let error = format::Paint::detect(std::io::stderr().is_terminal()).red("error:");
            eprintln!("{error} {}", exit::one_line(&err));
            exit::exit_code(&err)
        }
    }
}

#[cfg(test)]
mod tests;
