//! `xenvault`: the command line. Each area's subcommands live in their own module and
//! are flattened into one verb list here; the work itself lives in the library crates.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xenvault", version, about = "Agentless image-level backup for XenServer / XCP-ng")]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
