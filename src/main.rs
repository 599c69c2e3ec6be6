//! `omni`: Helios video generation from the command line (`omni generate`) and, later, over HTTP
//! (`omni serve`).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    if let Err(err) = cli::run(args) {
        // One readable line: the cause chain, outermost first.
        eprintln!("omni: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
