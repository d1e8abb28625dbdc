//! `xenvault`: the command line. Each area's subcommands live in their own module and
//! are flattened into one verb list here; the work itself lives in the library crates.

mod backup_cmds;
mod benchmark_cmd;
mod config_backup_cmds;
mod demo_cmd;
mod environment;
mod exit;
mod health_cmds;
mod job_cmds;
mod metadata_cmds;
mod mirror_cmd;
mod node_cmd;
mod output;
mod pool_cmds;
mod progress;
mod prompt;
mod repo_cmds;
mod restore_cmds;
mod retention_cmd;
mod server_cmds;
mod sim_cmds;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "xenvault", version, about = "Agentless image-level backup for XenServer / XCP-ng")]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Show times in UTC instead of the local time zone (JSON is always UTC).
    #[arg(long, global = true)]
    utc: bool,
    #[command(subcommand)]
    command: Command,
}

// Each area adds one flattened variant: `#[command(flatten)] Area(area::Commands)`,
// and one arm in `run` calling `area::run(cmd).await`.
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Backup(backup_cmds::Commands),
    #[command(flatten)]
    Demo(demo_cmd::Commands),
    #[command(flatten)]
    Health(health_cmds::Commands),
    #[command(flatten)]
    Job(job_cmds::Commands),
    #[command(flatten)]
    Metadata(metadata_cmds::Commands),
    #[command(flatten)]
    Mirror(mirror_cmd::Commands),
    #[command(flatten)]
    Node(node_cmd::Commands),
    #[command(flatten)]
    Pool(pool_cmds::Commands),
    #[command(flatten)]
    Benchmark(benchmark_cmd::Commands),
    #[command(flatten)]
    Repo(repo_cmds::Commands),
    #[command(flatten)]
    Restore(restore_cmds::Commands),
    #[command(flatten)]
    Retention(retention_cmd::Commands),
    #[command(flatten)]
    Server(server_cmds::Commands),
    #[command(flatten)]
    Sim(sim_cmds::Commands),
    /// Print a shell completion script: xenvault completions bash > /etc/bash_completion.d/xenvault
    Completions { shell: clap_complete::Shell },
    /// Write man pages (xenvault.1 and one per subcommand) into a directory.
    Man {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Backup(cmd) => backup_cmds::run(cmd).await,
        Command::Demo(cmd) => demo_cmd::run(cmd).await,
        Command::Health(cmd) => health_cmds::run(cmd).await,
        Command::Job(cmd) => job_cmds::run(cmd).await,
        Command::Metadata(cmd) => metadata_cmds::run(cmd).await,
        Command::Mirror(cmd) => mirror_cmd::run(cmd).await,
        Command::Node(cmd) => node_cmd::run(cmd).await,
        Command::Pool(cmd) => pool_cmds::run(cmd).await,
        Command::Benchmark(cmd) => benchmark_cmd::run(cmd).await,
        Command::Repo(cmd) => repo_cmds::run(cmd).await,
        Command::Restore(cmd) => restore_cmds::run(cmd).await,
        Command::Retention(cmd) => retention_cmd::run(cmd).await,
        Command::Server(cmd) => server_cmds::run(cmd).await,
        Command::Sim(cmd) => sim_cmds::run(cmd).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "xenvault", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::use_utc(cli.utc);
    // libnbd sends an IP address as SNI, which rustls warns about on every connection.
    let filter = match cli.verbose {
        0 => "warn,rustls::msgs::handshake=error",
        1 => "info,xenvault=debug,rustls::msgs::handshake=error",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", exit::chain_text(&e));
            exit::code_for(&e)
        }
    }
}
