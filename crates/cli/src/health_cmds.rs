//! `healthcheck`: boot a restore point as a temporary VM without network and wait for its
//! guest agent, or (`--no-boot`) read every file system of the point. The work lives in
//! `xenvault_restore::health`; this module parses and reports. Exit 0 on a pass or weak
//! pass, [`crate::exit::DAMAGE_FOUND`] on a fail.

use crate::repo_cmds::{RepoArgs, print_json, restore_point};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use xenvault_pool::inventory::Kind;
use xenvault_restore::health::{BootCheckOptions, Outcome, boot_check, no_boot_check};

#[derive(clap::Subcommand)]
pub enum Commands {
    /// Check that a restore point boots (a temporary VM, no network, removed afterwards), or
    /// with --no-boot that all its file systems read. Exit 0: pass or weak pass; 3: fail.
    Healthcheck(HealthcheckArgs),
}

#[derive(Args)]
pub struct HealthcheckArgs {
    /// Restore point id (or a prefix of at least 4 characters, or "latest").
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// The VM (name or uuid) whose restore points "latest" and prefixes choose from.
    #[arg(long, visible_alias = "vm")]
    source: Option<String>,
    /// Pool name, as given to `pool add` (not needed with --no-boot).
    #[arg(long, required_unless_present = "no_boot")]
    pool: Option<String>,
    #[command(flatten)]
    config: crate::pool_cmds::ConfigArg,
    /// SR (uuid or name) for the temporary VM's disks (default: the original SR, else the pool's default SR).
    #[arg(long, conflicts_with = "no_boot")]
    sr: Option<String>,
    /// Seconds the guest agent may take to report.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Seconds a VM without guest agent must stay running to pass the weaker check.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    run_for: u64,
    /// Do not boot: open every partition and walk its file system's metadata.
    #[arg(long)]
    no_boot: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: Commands) -> Result<ExitCode> {
    let Commands::Healthcheck(a) = cmd;
    let repo = a.repo.open().await?;
    let m = restore_point(&repo, &a.id, a.source.as_deref()).await?;
    let cancel = CancellationToken::new();
    crate::backup_cmds::cancel_on_signals(
        cancel.clone(),
        "stopping the health check: the temporary VM and its disks are removed",
        "the temporary VM (other_config xenvault-health-check) may be left in the pool",
    )?;
    let outcome = match (a.no_boot, &a.pool) {
        (true, _) => {
            let report = no_boot_check(&repo, &m, &cancel).await.map_err(crate::restore_cmds::restore_error)?;
            if a.json {
                print_json(&report)?;
            } else {
                println!("{} of {} ({}): {}", report.outcome, m.short_id(), report.vm_name, report.reason);
                for v in &report.volumes {
                    let state = v.error.as_deref().map_or_else(|| format!("{} entries", v.entries), |e| e.to_owned());
                    println!("  disk {} {} ({}): {state}", v.disk, v.volume, v.content);
                }
            }
            report.outcome
        }
        (false, Some(pool)) => {
            let login = a.config.login(pool)?;
            let client = xenvault_pool::host::connect(&login).await.map_err(crate::backup_cmds::auth_kind)?;
            let sr = match &a.sr {
                Some(sr) => Some(crate::restore_cmds::resolve(&client, Kind::Sr, sr).await?),
                None => None,
            };
            let opts = BootCheckOptions {
                sr,
                timeout: Duration::from_secs(a.timeout),
                stay_running: Duration::from_secs(a.run_for),
                cancel,
                ..Default::default()
            };
            let bars = crate::progress::Bars::new(a.json);
            let report = boot_check(&client, &repo, &m, &opts, bars.clone())
                .await
                .map_err(crate::restore_cmds::restore_error)?;
            bars.clear();
            if a.json {
                print_json(&report)?;
            } else {
                println!("{} of {} ({}): {}", report.outcome, m.short_id(), report.vm_name, report.reason);
                if let Some(os) = &report.guest_os {
                    println!("  guest: {os}");
                }
                println!("  restored in {:.1} s, checked in {:.1} s", report.restore_seconds, report.seconds);
            }
            for left in &report.left_behind {
                eprintln!("warning: the temporary VM's {left} could not be removed");
            }
            report.outcome
        }
        (false, None) => anyhow::bail!("--pool is needed to boot the restore point (or use --no-boot)"),
    };
    Ok(match outcome {
        Outcome::Pass | Outcome::WeakPass => ExitCode::SUCCESS,
        Outcome::Fail => ExitCode::from(crate::exit::DAMAGE_FOUND),
    })
}
