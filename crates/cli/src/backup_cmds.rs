//! `xenvault backup`: back up VMs of a registered pool into a repository.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use xenvault_engine::job::{self, BackupOptions, LockAfterBackup};
use xenvault_engine::report::{JobReport, Status};
use xenvault_engine::selection::{SelectOptions, Selector};
use xenvault_engine::strategy::{Level, Requested};
use xenvault_engine::throttle::RateLimit;
use xenvault_pool::Host;

use crate::exit::ExitKind;
use crate::pool_cmds::ConfigArg;
use xenvault_repo::backend::RetentionMode;

#[derive(Subcommand)]
pub enum Commands {
    /// Back up VMs of a pool (snapshot, read disks, store one restore point per VM).
    Backup(BackupArgs),
}

#[derive(Args)]
pub struct BackupArgs {
    /// Pool name, as given to `pool add`.
    #[arg(long)]
    pub pool: String,
    /// VM name or uuid (repeatable).
    #[arg(long)]
    pub vm: Vec<String>,
    /// Every VM carrying this tag (repeatable; new VMs are picked up at each run).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Every VM on this host (name or uuid).
    #[arg(long)]
    pub host: Vec<String>,
    /// Every VM of the pool.
    #[arg(long)]
    pub all: bool,
    /// Include templates, snapshots and the control domain when selecting by tag/host/all.
    #[arg(long)]
    pub include_templates: bool,
    #[arg(long)]
    pub include_control_domain: bool,
    #[command(flatten)]
    pub repo: crate::repo_cmds::RepoArgs,
    /// copy | full | inc | diff (inc: forever incremental, the default).
    #[arg(long, default_value = "inc")]
    pub level: Level,
    /// auto | cbt | vhd | full-read.
    #[arg(long, default_value = "auto")]
    pub strategy: Requested,
    /// `image` (disks by the chosen strategy) or `xva` (a full XVA export, re-exportable as XVA).
    #[arg(long, default_value = "image")]
    pub format: String,
    /// Ask for a quiesced snapshot (falls back to a plain one, reported).
    #[arg(long)]
    pub quiesce: bool,
    /// Shell command run before the snapshot (VM identity in XENVAULT_VM_* variables).
    #[arg(long)]
    pub pre_cmd: Option<String>,
    /// Shell command run after the snapshot.
    #[arg(long)]
    pub post_cmd: Option<String>,
    /// Leave out the disk at this device position (repeatable).
    #[arg(long)]
    pub exclude_disk: Vec<String>,
    /// VMs backed up at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Disks of one VM read at once.
    #[arg(long, default_value_t = 2)]
    pub disk_concurrency: usize,
    /// NBD connections per disk.
    #[arg(long, default_value_t = 4)]
    pub nbd_connections: usize,
    /// Seconds to wait for another backup of the same VM (any process, any node) to
    /// finish before skipping the VM.
    #[arg(long, default_value_t = 60)]
    pub vm_lock_wait: u64,
    /// Make each new restore point immutable for N days (S3 buckets with object lock; as `xenvault lock`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub lock_days: Option<u32>,
    /// With --lock-days: governance (users with the bypass permission may lift it) or compliance.
    #[arg(long, default_value = "governance", requires = "lock_days")]
    pub lock_mode: RetentionMode,
    /// Bytes per second read from the pool, across every VM and disk of the backup.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_rate: Option<u64>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

impl BackupArgs {
    fn options(&self) -> anyhow::Result<BackupOptions> {
        let mut selectors: Vec<Selector> = self.vm.iter().cloned().map(Selector::NameOrUuid).collect();
        selectors.extend(self.tag.iter().cloned().map(Selector::Tag));
        selectors.extend(self.host.iter().cloned().map(Selector::Host));
        if self.all {
            selectors.push(Selector::All);
        }
        if selectors.is_empty() {
            anyhow::bail!("choose VMs with --vm, --tag, --host or --all");
        }
        let xva = match self.format.as_str() {
            "image" => false,
            "xva" => true,
            other => anyhow::bail!("unknown format {other:?} (image, xva)"),
        };
        if xva && !matches!(self.level, Level::Copy | Level::Full) {
            anyhow::bail!("--format xva is a full backup: use --level copy or full");
        }
        Ok(BackupOptions {
            selectors,
            select: SelectOptions {
                include_templates: self.include_templates,
                include_snapshots: false,
                include_control_domain: self.include_control_domain,
            },
            level: self.level,
            strategy: self.strategy,
            xva,
            quiesce: self.quiesce,
            pre_cmd: self.pre_cmd.clone(),
            post_cmd: self.post_cmd.clone(),
            exclude_disks: self.exclude_disk.clone(),
            vm_concurrency: self.concurrency,
            disk_concurrency: self.disk_concurrency,
            nbd_connections: self.nbd_connections,
            vm_lock_wait: std::time::Duration::from_secs(self.vm_lock_wait),
            cancel: CancellationToken::new(),
            job_id: None,
            run_id: None,
            lock: self.lock_days.map(|days| LockAfterBackup { days, mode: self.lock_mode }),
            speed_limit: self.limit_rate.map(RateLimit::new).transpose()?,
            zstd_level: None,
        })
    }
}

/// Exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as shells say).
pub(crate) const INTERRUPTED: u8 = 130;

/// Cancels `token` at the first SIGINT or SIGTERM, saying what is being cleaned up
/// (`stopping`); a second one ends the process at once, saying what may be left (`forced`).
pub(crate) fn cancel_on_signals(
    token: CancellationToken,
    stopping: &'static str,
    forced: &'static str,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("interrupted: {stopping} (interrupt again to quit at once)");
        token.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("forced exit: {forced}");
        std::process::exit(i32::from(INTERRUPTED));
    });
    Ok(())
}

pub async fn run(command: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Backup(args) = command;
    let options = args.options()?;
    cancel_on_signals(
        options.cancel.clone(),
        "stopping the transfers, removing this run's snapshots, releasing the VM and repository locks; nothing more is committed",
        "the next backup removes what this one left",
    )?;
    let login = args.config.login(&args.pool)?;
    let repo = args.repo.open().await?;
    let store = xenvault_engine::store::Store::from_repository(repo);
    let host = Host::connect(&login).await.map_err(auth_kind)?;
    let progress = crate::progress::Bars::new(false);
    let report = job::backup(&host, &store, &options, progress.clone()).await;
    host.logout().await;
    let report = report.map_err(|e| lock_refusal(e, &options))?;
    progress.clear();
    let code = print_report(&report, args.json)?;
    match &report.lock_error {
        Some(e) => Err(anyhow::anyhow!("{e} (--lock-days)")),
        None if options.cancel.is_cancelled() => {
            eprintln!("interrupted: cleaned up; restore points committed before the interruption are listed above");
            Ok(ExitCode::from(INTERRUPTED))
        }
        _ => Ok(code),
    }
}

/// Names the flag that asked for the object lock a repository cannot give.
fn lock_refusal(e: xenvault_engine::Error, options: &BackupOptions) -> anyhow::Error {
    use xenvault_repo::backend::BackendError::{ObjectLockDisabled, Unsupported};
    let refused = matches!(
        &e,
        xenvault_engine::Error::Repo(xenvault_repo::Error::Backend(Unsupported { .. } | ObjectLockDisabled { .. }))
    );
    let e = anyhow::Error::new(e);
    if refused && options.lock.is_some() { e.context("--lock-days needs an S3 bucket with object lock") } else { e }
}

/// Prints the report (with the lock given to its restore points) and returns the exit
/// code it deserves.
fn print_report(report: &JobReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        crate::repo_cmds::print_json(report)?;
    } else {
        print!("{}", report.summary());
    }
    let failed = report.vms.iter().filter(|v| matches!(v.status, Status::Failed)).count();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else if failed < report.vms.len() {
        ExitCode::from(crate::exit::PARTIAL)
    } else {
        ExitCode::from(crate::exit::FAILURE)
    })
}

/// Credentials refused by the pool get the AUTH exit code.
pub fn auth_kind(e: impl Into<xenvault_engine::Error>) -> anyhow::Error {
    let e = e.into();
    if e.is_auth() { anyhow::Error::new(e).context(ExitKind::Auth) } else { e.into() }
}
