//! `xenvault server`: runs the service (REST API, jobs) in the foreground until SIGTERM
//! or Ctrl-C; `xenvault server backup-config|list-config|restore-config` back its own
//! configuration up and bring it back (`config_backup_cmds`).

use anyhow::Result;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use xenvault_server::{Server, ServerConfig, config};

#[derive(Subcommand)]
pub enum Commands {
    /// Run the backup service: scheduled jobs, run history, the REST API (HTTPS).
    Server(ServerArgs),
}

#[derive(Args)]
pub struct ServerArgs {
    /// Without a command: run the service.
    #[command(subcommand)]
    command: Option<crate::config_backup_cmds::ConfigCommand>,
    /// Server settings (TOML; every key in docs/server.md): listen, data_dir, catalog, TLS,
    /// SMTP for email reports, cache and restore directories, shutdown timeout.
    #[arg(long, env = "XENVAULT_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443, or the config's].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Catalog, keys and the self-signed certificate [default: /var/lib/xenvault, or the config's].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub async fn run(Commands::Server(args): Commands) -> Result<ExitCode> {
    if let Some(command) = args.command {
        return crate::config_backup_cmds::run(command).await;
    }
    let path = args.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    let mut settings = ServerConfig::load(&path, args.config.is_some())?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if settings.admin_password.is_none() {
        settings.admin_password = std::env::var("XENVAULT_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
    }
    let grace = settings.shutdown_timeout_secs;
    let server = Server::start(settings).await?;
    if let Some(admin) = server.first_admin() {
        match &admin.generated_password {
            Some(password) => println!(
                "first start: created user '{}' with password {password} (shown once; set admin_password in the \
                 config or XENVAULT_ADMIN_PASSWORD before the first start to choose it)",
                admin.user
            ),
            None => println!("first start: created user '{}' with the configured password", admin.user),
        }
    }
    if server.interrupted_runs() > 0 {
        println!("{} run(s) left unfinished by the last stop are marked interrupted", server.interrupted_runs());
    }
    println!("certificate SHA-256 fingerprint {}", server.fingerprint());
    println!("listening on {}", server.url());
    stop_signal().await?;
    eprintln!("stopping: running jobs get {grace} s to finish, then are cancelled (their snapshots removed)");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (systemd, docker stop) or SIGINT (Ctrl-C).
pub(crate) async fn stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
