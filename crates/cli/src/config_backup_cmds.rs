//! `xenvault server backup-config|list-config|restore-config`: xenvault's own configuration
//! (settings, catalog, keys) sealed with a passphrase of its own into a repository, and
//! brought back into a fresh data directory (`xenvault_server::config_backup`).

use crate::backup_cmds::cancel_on_signals;
use crate::exit::ExitKind;
use crate::repo_cmds::{RepoArgs, classify, passphrase, print_json, restore_point};
use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use xenvault_jobs::config_backup::{self, ConfigBackupError};
use xenvault_repo::{Manifest, Repository, Secret};
use xenvault_server::config_backup::{ConfigRestoreError, ConfigSnapshot, PASSPHRASE_ENV, RestoreTarget};
use xenvault_server::{ServerConfig, config};
use xenvault_types::units;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Back xenvault's own configuration (settings, catalog, keys) up into a repository,
    /// sealed with the configuration backup passphrase (not the repository's).
    #[command(name = "backup-config")]
    Backup(BackupArgs),
    /// List the configuration backups of a repository.
    #[command(name = "list-config")]
    List(ListArgs),
    /// Restore a configuration backup into a fresh data directory: pools, repositories,
    /// jobs, users, run history and restore point records come back.
    #[command(name = "restore-config")]
    Restore(RestoreArgs),
}

/// The configuration backup passphrase.
#[derive(Args)]
pub struct PassphraseArg {
    /// File holding the configuration backup passphrase (else $XENVAULT_CONFIG_PASSPHRASE,
    /// or a prompt on a terminal).
    #[arg(long)]
    config_passphrase_file: Option<PathBuf>,
}

impl PassphraseArg {
    fn get(&self, fallback_file: Option<&PathBuf>) -> Result<String> {
        let file = self.config_passphrase_file.as_ref().or(fallback_file);
        let secret = match passphrase(file.map(PathBuf::as_path), PASSPHRASE_ENV)? {
            Some(secret) => secret,
            None if crate::prompt::interactive() => {
                Secret::passphrase(crate::prompt::secret("configuration backup passphrase: ")?)
            }
            None => {
                return Err(anyhow!(
                    "no configuration backup passphrase: set {PASSPHRASE_ENV} or give --config-passphrase-file"
                )
                .context(ExitKind::Usage));
            }
        };
        match secret {
            Secret::Passphrase(text) if !text.is_empty() => Ok(text.to_string()),
            _ => Err(anyhow!("the configuration backup passphrase is empty").context(ExitKind::Usage)),
        }
    }
}

#[derive(Args)]
pub struct BackupArgs {
    /// The server's settings (TOML) [default: /etc/xenvault/server.toml].
    #[arg(long, env = "XENVAULT_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory [default: the settings'].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// Tag for the restore point (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The configuration backup (id or unique prefix) [default: the newest].
    #[arg(long)]
    point: Option<String>,
    /// Where the restored server keeps its data (created; must be empty unless --force).
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The catalog database (postgres://...) to restore into, when not the backed-up one.
    #[arg(long)]
    catalog: Option<String>,
    /// Replace what the data directory and catalog hold.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    passphrase: PassphraseArg,
    #[arg(long)]
    json: bool,
}

pub async fn run(command: ConfigCommand) -> Result<ExitCode> {
    match command {
        ConfigCommand::Backup(a) => backup(a).await,
        ConfigCommand::List(a) => list(a).await,
        ConfigCommand::Restore(a) => restore(a).await,
    }
}

/// A wrong passphrase exits with AUTH; repository errors keep their codes.
fn config_error(e: ConfigRestoreError) -> anyhow::Error {
    match e {
        ConfigRestoreError::Backup(ConfigBackupError::WrongPassphrase) => {
            anyhow::Error::new(ConfigBackupError::WrongPassphrase).context(ExitKind::Auth)
        }
        ConfigRestoreError::Backup(ConfigBackupError::Repository(e)) => classify(e),
        ConfigRestoreError::Refused(message) => anyhow!(message).context(ExitKind::Usage),
        e => anyhow::Error::new(e),
    }
}

async fn backup(a: BackupArgs) -> Result<ExitCode> {
    let path = a.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    let mut settings = ServerConfig::load(&path, a.config.is_some())?;
    if let Some(dir) = a.data_dir {
        settings.data_dir = dir;
    }
    let passphrase = a.passphrase.get(settings.config_backup_passphrase_file.as_ref())?;
    let repo = a.repo.open().await?;
    let catalog = xenvault_server::config_backup::open_catalog(&settings).await.map_err(config_error)?;
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone(), "stopping the configuration backup", "nothing was committed")?;
    let stored = xenvault_server::config_backup::back_up(&settings, &catalog, &repo, &passphrase, a.tag, &cancel)
        .await
        .map_err(config_error)?;
    if a.json {
        print_json(&stored)?;
    } else {
        println!(
            "configuration of {} backed up as restore point {} ({}; {} stored): {}",
            stored.info.server,
            stored.restore_point,
            units::bytes(stored.info.bytes),
            units::bytes(stored.bytes_stored),
            counts(&stored.info.contents)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn counts(contents: &std::collections::BTreeMap<String, u64>) -> String {
    contents.iter().map(|(what, n)| format!("{n} {what}")).collect::<Vec<_>>().join(", ")
}

async fn list(a: ListArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let points = config_backup::list(&repo).await.map_err(|e| config_error(e.into()))?;
    if a.json {
        let entries: Vec<_> = points
            .iter()
            .map(|(m, info)| serde_json::json!({"id": m.id, "time": m.time, "tags": m.tags, "info": info}))
            .collect();
        print_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|(m, info)| {
            vec![
                m.short_id().to_owned(),
                crate::output::time(m.time),
                info.server.clone(),
                units::bytes(info.bytes),
                counts(&info.contents),
            ]
        })
        .collect();
    crate::output::table(&["ID", "TIME", "SERVER", "SIZE", "CONTENTS"], &rows, &[3]);
    Ok(ExitCode::SUCCESS)
}

/// The configuration backup `wanted` names, else the newest.
async fn config_point(repo: &Repository, wanted: Option<&str>) -> Result<Manifest> {
    if let Some(wanted) = wanted {
        return restore_point(repo, wanted, None).await;
    }
    let points = config_backup::list(repo).await.map_err(|e| config_error(e.into()))?;
    points
        .into_iter()
        .next_back()
        .map(|(m, _)| m)
        .ok_or_else(|| anyhow!("no configuration backup in the repository (`xenvault server backup-config` makes one)"))
}

async fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let point = config_point(&repo, a.point.as_deref()).await?;
    let blob = config_backup::read(&repo, &point).await.map_err(|e| config_error(e.into()))?;
    let passphrase = a.passphrase.get(None)?;
    let snapshot = ConfigSnapshot::open(&passphrase, &blob).map_err(config_error)?;
    let target = RestoreTarget { data_dir: a.data_dir, catalog: a.catalog, force: a.force };
    let report = xenvault_server::config_backup::restore(snapshot, &target)
        .await
        .map_err(config_error)
        .with_context(|| format!("restoring configuration backup {}", point.short_id()))?;
    if a.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "restored the configuration of {} backed up at {} into {}: {}",
        report.server,
        crate::output::time(report.backed_up_at),
        report.data_dir.display(),
        counts(&report.contents)
    );
    for path in &report.external_paths {
        println!("the settings name {}: it must exist on this machine too", path.display());
    }
    println!("start it with: xenvault server --config {}", report.settings_file.display());
    Ok(ExitCode::SUCCESS)
}
