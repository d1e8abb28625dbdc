//! `xenvault backup`: back up VMs of a registered pool into a repository.

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use xenvault_engine::host::Host;
use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::{JobReport, Status};
use xenvault_engine::selection::{SelectOptions, Selector};
use xenvault_engine::strategy::{Level, Requested};
use xenvault_engine::transfer::Progress;

use crate::exit::ExitKind;
use crate::pool_cmds::ConfigArg;
use xenvault_repo::backend::RetentionMode;
use xenvault_repo::retention::{LockReport, lock_restore_points};

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
        })
    }
}

/// Exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as shells say).
const INTERRUPTED: u8 = 130;

/// Cancels `token` at the first SIGINT or SIGTERM, saying what is being cleaned up; a
/// second one ends the process at once.
fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!(
            "interrupted: stopping the transfers, removing this run's snapshots, releasing the VM and repository locks; nothing more is committed (interrupt again to quit at once)"
        );
        token.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("forced exit: the next backup removes what this one left");
        std::process::exit(i32::from(INTERRUPTED));
    });
    Ok(())
}

pub async fn run(command: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Backup(args) = command;
    let options = args.options()?;
    cancel_on_signals(options.cancel.clone())?;
    let login = args.config.store()?.login(&args.pool)?;
    let repo = args.repo.open().await?;
    if args.lock_days.is_some() {
        // Before any snapshot: a repository that cannot lock fails the run, not after it.
        repo.backend().require_object_lock().await.context("--lock-days")?;
    }
    let store = xenvault_engine::store::Store::from_repository(repo.clone());
    let host = Host::connect(&login).await.map_err(auth_kind)?;
    let progress = Bars::new();
    let report = job::backup(&host, &store, &options, progress.clone()).await;
    host.logout().await;
    let report = report?;
    progress.clear();
    let lock = match args.lock_days {
        Some(days) => {
            let ids: Vec<String> = report.vms.iter().filter_map(|v| v.restore_point.clone()).collect();
            let until = chrono::Utc::now() + chrono::Duration::days(i64::from(days));
            let locked = lock_restore_points(&repo, &ids, args.lock_mode, until).await;
            Some(locked.map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("the restore points {} are stored but NOT locked", ids.join(", ")))
            }))
        }
        None => None,
    };
    let locked = lock.as_ref().and_then(|l| l.as_ref().ok());
    let code = print_report(&report, locked, args.json)?;
    match lock {
        Some(Err(e)) => Err(e),
        _ if options.cancel.is_cancelled() => {
            eprintln!("interrupted: cleaned up; restore points committed before the interruption are listed above");
            Ok(ExitCode::from(INTERRUPTED))
        }
        _ => Ok(code),
    }
}

/// Prints the report (and the lock applied to its restore points) and returns the exit
/// code it deserves.
fn print_report(report: &JobReport, lock: Option<&LockReport>, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let mut doc = serde_json::to_value(report)?;
        if let (Some(lock), Some(fields)) = (lock, doc.as_object_mut()) {
            fields.insert("lock".into(), serde_json::to_value(lock)?);
        }
        crate::repo_cmds::print_json(&doc)?;
    } else {
        print!("{}", report.summary());
        if let Some(lock) = lock {
            let until = lock.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            println!("locked {} restore point(s) in {} mode until {until}", lock.restore_points.len(), lock.mode);
        }
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
pub fn auth_kind(e: xenvault_engine::Error) -> anyhow::Error {
    if e.is_auth() { anyhow::Error::new(e).context(ExitKind::Auth) } else { e.into() }
}

/// One progress bar per disk, on a terminal only.
pub struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Arc<Self> {
        let multi = std::io::stderr().is_terminal().then(MultiProgress::new);
        Arc::new(Self { multi, bars: Mutex::new(HashMap::new()) })
    }

    pub fn clear(&self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

impl Progress for Bars {
    fn start(&self, key: &str, label: &str, total: u64) {
        let Some(multi) = &self.multi else { return };
        let bar = multi.add(ProgressBar::new(total));
        if let Ok(style) =
            ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(key.to_owned(), bar);
        }
    }

    fn set_total(&self, key: &str, total: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(key).cloned()) {
            bar.set_length(total);
        }
    }

    fn advance(&self, key: &str, bytes: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(key).cloned()) {
            bar.inc(bytes);
        }
    }

    fn finish(&self, key: &str) {
        if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(key)) {
            bar.finish_and_clear();
        }
    }
}
