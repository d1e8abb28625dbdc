//! `xenvault metadata backup|list|restore`: the pool database (`/pool/xmldbdump`) as
//! restore points of their own kind (`xenvault_engine::pool_metadata`). A restore is the
//! host's dry run unless `--yes` is given.

use crate::backup_cmds::{INTERRUPTED, auth_kind, cancel_on_signals};
use crate::pool_cmds::ConfigArg;
use crate::repo_cmds::{RepoArgs, classify, print_json, restore_point};
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use xenvault_engine::pool_metadata::{self, MetadataRestoreReport, RestoreOutcome};
use xenvault_pool::Host;
use xenvault_repo::{Manifest, Repository};
use xenvault_types::units;

#[derive(Subcommand)]
pub enum Commands {
    /// Back up and restore the pool database (pool metadata).
    #[command(subcommand)]
    Metadata(MetadataCommand),
}

#[derive(Subcommand)]
pub enum MetadataCommand {
    /// Download the pool database into the repository as a restore point.
    Backup(BackupArgs),
    /// List the pool database restore points.
    List(ListArgs),
    /// Check a pool database restore point against the pool (the host's dry run); with
    /// --yes, restore it (the pool's xapi restarts on it and every session ends).
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct BackupArgs {
    /// Pool name, as given to `pool add`.
    #[arg(long)]
    pool: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Tag for the restore point (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only the database backups of this pool (its name or uuid as backed up).
    #[arg(long)]
    pool: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Restore point id (or unique prefix), or "latest" (the newest of the pool restored onto).
    id: String,
    /// Pool to restore onto, as given to `pool add`.
    #[arg(long)]
    pool: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Restore for real after the dry run passes (without it, nothing changes).
    #[arg(long)]
    yes: bool,
    /// With --yes: return once the host accepted the database, without waiting for its restart.
    #[arg(long, requires = "yes")]
    no_wait: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn run(command: Commands) -> Result<ExitCode> {
    let Commands::Metadata(command) = command;
    match command {
        MetadataCommand::Backup(a) => backup(a).await,
        MetadataCommand::List(a) => list(a).await,
        MetadataCommand::Restore(a) => restore(a).await,
    }
}

async fn connect(config: &ConfigArg, pool: &str) -> Result<Host> {
    Host::connect(&config.login(pool)?).await.map_err(auth_kind)
}

/// Repository errors keep their exit codes, refused pool credentials exit with AUTH.
fn engine_error(e: xenvault_engine::Error) -> anyhow::Error {
    match e {
        xenvault_engine::Error::Repo(e) => classify(e),
        e => auth_kind(e),
    }
}

/// A token cancelled by Ctrl-C or SIGTERM.
fn cancel_token(stopping: &'static str) -> Result<CancellationToken> {
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone(), stopping, "nothing was committed")?;
    Ok(cancel)
}

fn interrupted(what: &str) -> ExitCode {
    eprintln!("interrupted: {what}");
    ExitCode::from(INTERRUPTED)
}

async fn backup(a: BackupArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let host = connect(&a.config, &a.pool).await?;
    let cancel = cancel_token("stopping the download; nothing is committed")?;
    let bars = crate::progress::Bars::new(a.json);
    let result = pool_metadata::backup(&host, &repo, a.tag.clone(), &cancel, bars.clone()).await;
    bars.clear();
    host.logout().await;
    let report = match result {
        Err(xenvault_engine::Error::Cancelled) => return Ok(interrupted("nothing was committed")),
        other => other.map_err(engine_error)?,
    };
    if a.json {
        print_json(&report)?;
    } else {
        let info = &report.info;
        println!(
            "restore point {}: the database of pool {} ({}), {} ({} stored) in {:.1} s",
            report.restore_point,
            info.pool_name,
            info.pool_uuid,
            units::bytes(info.bytes),
            units::bytes(report.bytes_stored),
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(a: ListArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let points = pool_metadata::list(&repo, a.pool.as_deref()).await.map_err(anyhow::Error::new)?;
    if a.json {
        let entries: Vec<serde_json::Value> = points
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
                info.pool_name.clone(),
                info.master.clone(),
                info.xapi_version.clone(),
                units::bytes(info.bytes),
            ]
        })
        .collect();
    crate::output::table(&["ID", "TIME", "POOL", "MASTER", "XAPI", "SIZE"], &rows, &[5]);
    Ok(ExitCode::SUCCESS)
}

/// The restore point `wanted` names; `latest` is the newest database backup of the pool
/// with uuid `pool_uuid`.
async fn metadata_point(repo: &Repository, wanted: &str, pool_uuid: &str) -> Result<Manifest> {
    if wanted != "latest" {
        return restore_point(repo, wanted, None).await;
    }
    let points = pool_metadata::list(repo, Some(pool_uuid)).await.map_err(anyhow::Error::new)?;
    points.into_iter().next_back().map(|(m, _)| m).ok_or_else(|| {
        anyhow!(
            "no database backup of this pool ({pool_uuid}) in the repository: \
             `xenvault metadata list` shows the others, restore one by its id"
        )
    })
}

async fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let host = connect(&a.config, &a.pool).await?;
    let pool_uuid = host.describe().await.map_err(auth_kind)?.pool_uuid;
    let point = metadata_point(&repo, &a.id, &pool_uuid).await?;
    let cancel = cancel_token("stopping before the database is sent; the pool is unchanged unless it was sent")?;
    let bars = crate::progress::Bars::new(a.json);
    let result = pool_metadata::restore(&host, &repo, &point, a.yes, !a.no_wait, &cancel, bars.clone()).await;
    bars.clear();
    host.logout().await;
    let report = match result {
        Err(xenvault_engine::Error::Cancelled) => {
            return Ok(interrupted("the database was not restored unless the host had already accepted it"));
        }
        other => other.map_err(engine_error)?,
    };
    if a.json {
        print_json(&report)?;
    } else {
        print_restore(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_restore(r: &MetadataRestoreReport) {
    let b = &r.backup;
    println!(
        "restore point {}: the database of pool {} ({}) from {}, master {}, xapi {}",
        r.restore_point,
        b.pool_name,
        b.pool_uuid,
        crate::output::time(b.dumped_at),
        b.master,
        b.xapi_version
    );
    if !r.same_pool {
        println!(
            "note: it is another pool's database than that of {} ({}), the pool restored onto",
            r.target_pool_name, r.target_pool_uuid
        );
    }
    match r.outcome {
        RestoreOutcome::Checked => println!(
            "dry run: the pool accepts it; nothing was changed. Restore it with --yes \
             (the pool's xapi restarts on it and every session ends)"
        ),
        RestoreOutcome::Applied => {
            println!("restored: the pool accepted the database and restarts on it (not waited for)")
        }
        RestoreOutcome::Restarted => println!("restored: the pool restarted on the database in {:.1} s", r.seconds),
    }
}
