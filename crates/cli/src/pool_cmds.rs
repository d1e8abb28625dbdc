//! `xenvault pool add|list|check`: the pools backups connect to.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use xenvault_engine::config::{self, ConfigStore, PoolEntry, TlsTrust};
use xenvault_engine::host::Host;

#[derive(Subcommand)]
pub enum Commands {
    /// Register, list and check pool connections.
    #[command(subcommand)]
    Pool(PoolCommand),
}

/// Where the pool configuration lives (`--config`, `XENVAULT_CONFIG`, or the XDG config dir).
#[derive(Args, Clone, Default)]
pub struct ConfigArg {
    #[arg(long, env = "XENVAULT_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn store(&self) -> anyhow::Result<ConfigStore> {
        Ok(ConfigStore::locate(self.config.clone())?)
    }
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Add or replace a pool. The password comes from XENVAULT_POOL_PASSWORD or --password-file.
    Add {
        name: String,
        /// The pool master, e.g. https://10.0.0.1
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "root")]
        user: String,
        /// Accept any TLS certificate (a self-signed host without a known fingerprint).
        #[arg(long, conflicts_with = "fingerprint")]
        insecure: bool,
        /// SHA-256 fingerprint of the host certificate to pin (hex, colons allowed).
        #[arg(long)]
        fingerprint: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List registered pools.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Log in to a pool and show what it is.
    Check {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub async fn run(command: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Pool(command) = command;
    match command {
        PoolCommand::Add { name, url, user, insecure, fingerprint, password_file, config } => {
            let password = match (&password_file, std::env::var("XENVAULT_POOL_PASSWORD")) {
                (Some(path), _) => config::read_password_file(path)?,
                (None, Ok(p)) if !p.is_empty() => p,
                _ => anyhow::bail!("give the password in XENVAULT_POOL_PASSWORD or with --password-file"),
            };
            let tls = match (insecure, fingerprint) {
                (true, _) => TlsTrust::Insecure,
                (false, Some(f)) => TlsTrust::Fingerprint(config::normalise_fingerprint(&f)?),
                (false, None) => TlsTrust::Verify,
            };
            let store = config.store()?;
            store.add_pool(&name, PoolEntry { url, user, tls }, &password)?;
            println!("pool {name} saved in {}", store.path().display());
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::List { json, config } => {
            let pools = config.store()?.load()?.pools;
            if json {
                let list: Vec<_> = pools
                    .iter()
                    .map(|(name, p)| serde_json::json!({"name": name, "url": p.url, "user": p.user, "tls": p.tls}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (name, p) in &pools {
                    let tls = match &p.tls {
                        TlsTrust::Verify => "verify".to_owned(),
                        TlsTrust::Insecure => "insecure".to_owned(),
                        TlsTrust::Fingerprint(f) => format!("pinned {f}"),
                    };
                    println!("{name}\t{}\t{}\t{tls}", p.url, p.user);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Check { name, json, config } => {
            let login = config.store()?.login(&name)?;
            let host = Host::connect(&login).await.map_err(crate::backup_cmds::auth_kind)?;
            let summary = host.describe().await;
            host.logout().await;
            let summary = summary?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "pool {name}: {} ({}), {} host(s), {} VM(s), API {}",
                    summary.pool_name, summary.pool_uuid, summary.hosts, summary.vms, summary.api_version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
