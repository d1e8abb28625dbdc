//! `lock`: immutable restore points with S3 object lock (see `xenvault_repo::retention`).

use crate::repo_cmds::{RepoArgs, classify, print_json};
use anyhow::Result;
use chrono::{Duration, Utc};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use xenvault_repo::backend::RetentionMode;
use xenvault_repo::retention::{LockReport, lock_restore_points};

#[derive(Subcommand)]
pub enum Commands {
    /// Make restore points immutable for N days (S3 buckets created with object lock).
    Lock(LockArgs),
}

#[derive(Args)]
pub struct LockArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Restore point ids, unique prefixes or "latest".
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every restore point of the repository.
    #[arg(long)]
    all: bool,
    /// Days from now during which nothing the restore points need can be deleted or overwritten.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: u32,
    /// governance (users with the bypass permission may lift it) or compliance (nobody can).
    #[arg(long, default_value = "governance")]
    mode: RetentionMode,
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: Commands) -> Result<ExitCode> {
    let Commands::Lock(args) = cmd;
    let repo = args.repo.open().await?;
    let ids = if args.all {
        repo.restore_points().await.map_err(classify)?.into_iter().map(|m| m.id).collect()
    } else {
        args.ids
    };
    let until = Utc::now() + Duration::days(i64::from(args.days));
    let report = lock_restore_points(&repo, &ids, args.mode, until).await.map_err(classify)?;
    if args.json {
        print_json(&report)?;
    } else {
        println!("{}", lock_summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `locked N restore point(s) in MODE mode until TIME: N objects, N packs`.
pub(crate) fn lock_summary(report: &LockReport) -> String {
    format!(
        "locked {} restore point(s) in {} mode until {}: {} objects, {} packs",
        report.restore_points.len(),
        report.mode,
        report.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        report.objects,
        report.packs
    )
}
