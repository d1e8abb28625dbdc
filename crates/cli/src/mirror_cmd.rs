//! `xenvault mirror`: keeps a second repository supplied with this one's restore points
//! (`xenvault_repo::mirror`): only missing chunks move, the target keeps its own key and
//! retention, mirrored points can be locked there and are verified from what it stores.
//! Ctrl-C stops cleanly; the same command run again resumes without re-sending.

use crate::backup_cmds::{INTERRUPTED, cancel_on_signals};
use crate::exit;
use crate::repo_cmds::{KeepArgs, RepoArgs, TargetArgs, classify, print_gc, print_json};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use xenvault_repo::backend::RetentionMode;
use xenvault_repo::mirror::{MirrorLock, MirrorOptions, MirrorReport};
use xenvault_types::units;

#[derive(Subcommand)]
pub enum Commands {
    /// Mirror restore points to a second repository: only missing chunks move, the target
    /// keeps its own key and, with --keep-*, its own retention (per VM; points it would
    /// remove at once are not sent); a rerun resumes an interrupted mirror.
    Mirror(MirrorArgs),
}

#[derive(Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Only the newest restore point of each VM (among those the other filters keep).
    #[arg(long)]
    latest: bool,
    /// Only restore points of this VM (name or uuid; repeatable).
    #[arg(long)]
    vm: Vec<String>,
    /// Only restore points of this backup job.
    #[arg(long)]
    job: Option<String>,
    #[command(flatten)]
    keep: KeepArgs,
    /// Make the mirrored restore points immutable on the target for N days (S3 object lock).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    lock_days: Option<u32>,
    /// With --lock-days: governance (users with the bypass permission may lift it) or compliance.
    #[arg(long, default_value = "governance", requires = "lock_days")]
    lock_mode: RetentionMode,
    /// Skip the verify pass over the mirrored restore points on the target.
    #[arg(long)]
    no_verify: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl MirrorArgs {
    fn options(&self) -> MirrorOptions {
        let policy = self.keep.policy();
        MirrorOptions {
            vms: self.vm.clone(),
            job: self.job.clone(),
            latest: self.latest,
            retention: (!policy.is_empty()).then_some(policy),
            lock: self.lock_days.map(|days| MirrorLock { days, mode: self.lock_mode }),
            verify: !self.no_verify,
        }
    }
}

pub async fn run(command: Commands) -> Result<ExitCode> {
    let Commands::Mirror(args) = command;
    let options = args.options();
    let src = args.repo.open().await?;
    let dst = args.target.open(&args.repo.backend()).await?;
    let cancel = CancellationToken::new();
    cancel_on_signals(
        cancel.clone(),
        "storing what was packed so far; run the same mirror again to resume",
        "a rerun sends again only what was not stored",
    )?;
    let bars = crate::progress::Bars::new(args.json);
    let mirrored = xenvault_repo::mirror::mirror(&src, &dst, &options, bars.clone(), &cancel).await;
    bars.clear();
    let report = match mirrored {
        Ok(report) => report,
        Err(xenvault_repo::Error::Cancelled) => {
            eprintln!(
                "interrupted: restore points mirrored before stay on the target with the chunks sent since; \
                 run the same command again to resume"
            );
            return Ok(ExitCode::from(INTERRUPTED));
        }
        Err(e) => return Err(lock_refusal(e, &options)),
    };
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report, &args.target.to);
    }
    Ok(ExitCode::from(if report.found_damage() { exit::DAMAGE_FOUND } else { 0 }))
}

/// Names the flag that asked for the object lock the target cannot give.
fn lock_refusal(e: xenvault_repo::Error, options: &MirrorOptions) -> anyhow::Error {
    use xenvault_repo::backend::BackendError::{ObjectLockDisabled, Unsupported};
    let refused = matches!(&e, xenvault_repo::Error::Backend(Unsupported { .. } | ObjectLockDisabled { .. }));
    let e = classify(e);
    if refused && options.lock.is_some() { e.context("--lock-days needs a target bucket with object lock") } else { e }
}

fn print_report(r: &MirrorReport, to: &str) {
    println!(
        "mirrored {} restore point(s) to {to}; {} already there, {} not sent (the target's retention would remove them)",
        r.copied.len(),
        r.skipped.len(),
        r.not_kept.len()
    );
    let matched = if r.chunk_ids_shared {
        "missing chunks found by id (shared chunk ids)".to_owned()
    } else {
        format!("{} chunks read and re-hashed with the target's key", r.chunks_read)
    };
    println!(
        "sent {} chunks ({}, {} stored); {matched}",
        r.chunks_sent,
        units::bytes(r.bytes_sent),
        units::bytes(r.bytes_stored)
    );
    if let Some(forget) = &r.forget {
        println!("retention on the target: {} kept, {} removed", forget.keep.len(), forget.remove.len());
        if let Some(gc) = &forget.prune {
            print_gc(gc);
        }
    }
    if let Some(lock) = &r.lock {
        println!("{}", crate::retention_cmd::lock_summary(lock));
    }
    let Some(v) = &r.verify else { return };
    println!(
        "verified {} restore point(s) on the target: {} packs, {} chunks ({})",
        v.restore_points_checked,
        v.packs_checked,
        v.chunks_checked,
        units::bytes(v.bytes_checked)
    );
    for b in &v.bad_chunks {
        println!("bad chunk {} in pack {}: {}", b.id, b.pack, b.reason);
    }
    for d in &v.damaged_indexes {
        println!("damaged index of pack {}: {}", d.pack, d.reason);
    }
    for (id, problems) in &v.damaged_restore_points {
        println!("damaged restore point {id}:");
        for p in problems {
            println!("  {p}");
        }
    }
    println!("{}", if v.found_damage() { "damage found on the target" } else { "no damage found" });
}
