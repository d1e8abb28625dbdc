//! Restore commands: `files` (list, find, extract files of a restore point's disks),
//! `serve-nbd` (instant access), `export` (raw, VHD, qcow2) and `restore vm`. The work lives in
//! `xenvault_restore`; this module parses and reports.

use crate::repo_cmds::{RepoArgs, classify, print_json, restore_point};
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_fsread::{Entry, EntryKind};
use xenvault_pool::inventory::{self, Kind};
use xenvault_repo::{DiskReader, Repository};
use xenvault_restore::RepoDisk;
use xenvault_restore::export::{DiskFormat, export};
use xenvault_restore::files::StoredFs;
use xenvault_restore::nbd::{DiskExport, SingleExport};
use xenvault_tls::ServerIdentity;
use xenvault_types::progress::{Key, Phase};
use xenvault_types::units;

#[derive(Subcommand)]
pub enum Commands {
    /// Browse and extract files of a restore point without restoring the VM.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Serve one disk of a restore point over NBD until interrupted.
    ServeNbd(ServeNbdArgs),
    /// Write one disk of a restore point as raw, dynamic VHD or qcow2.
    Export(ExportArgs),
    /// Restore whole VMs to a pool.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// Mount a file system of a restore point read-only (FUSE) until interrupted.
    Mount(MountArgs),
    /// Write one file of a restore point to stdout.
    Dump {
        #[command(flatten)]
        disk: DiskArgs,
        /// Volume: p1, p5, vg/lv or disk (default: the largest file system).
        #[arg(long)]
        partition: Option<String>,
        path: String,
    },
    /// Files added, removed or modified between two restore points (same disk and volume).
    Diff(DiffArgs),
}

#[derive(Args)]
pub struct DiffArgs {
    /// The older restore point (id, prefix, or "latest").
    old: String,
    /// The newer restore point.
    new: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// The VM whose restore points "latest" and prefixes choose from.
    #[arg(long, visible_alias = "vm")]
    source: Option<String>,
    /// Disk position, VDI uuid or name (default: the disk at the lowest position).
    #[arg(long)]
    disk: Option<String>,
    /// Volume: p1, p5, vg/lv or disk (default: the largest file system).
    #[arg(long)]
    partition: Option<String>,
    #[arg(long)]
    json: bool,
}

async fn diff(a: DiffArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let mut file_systems = Vec::new();
    for id in [&a.old, &a.new] {
        let m = restore_point(&repo, id, a.source.as_deref()).await?;
        let disk = m.disk(a.disk.as_deref()).map_err(classify)?;
        let reader = Arc::new(DiskReader::new(&repo, disk).await.map_err(classify)?);
        let fs = StoredFs::open(RepoDisk::new(reader, tokio::runtime::Handle::current()), a.partition.clone())
            .await
            .map_err(restore_error)?;
        file_systems.push(fs);
    }
    let report = xenvault_restore::diff::diff(&file_systems[0], &file_systems[1]).await.map_err(restore_error)?;
    if a.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let changes = report.changes.iter().map(|c| {
        let sign = match c.change {
            xenvault_restore::diff::Change::Added => "+",
            xenvault_restore::diff::Change::Removed => "-",
            xenvault_restore::diff::Change::Modified => "M",
        };
        let what = if c.what.is_empty() { String::new() } else { format!("  ({})", c.what.join(", ")) };
        format!("{sign} {}{what}", c.path)
    });
    let total = format!(
        "{} added, {} removed, {} modified, {} unchanged",
        report.added, report.removed, report.modified, report.unchanged
    );
    crate::output::lines(changes.chain(std::iter::once(total)));
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct MountArgs {
    #[command(flatten)]
    disk: DiskArgs,
    /// Volume: p1, p5, vg/lv or disk (default: the largest file system).
    #[arg(long)]
    partition: Option<String>,
    /// An existing directory.
    mountpoint: PathBuf,
}

async fn mount(a: MountArgs) -> Result<ExitCode> {
    let fs = a.disk.file_system(a.partition.clone()).await?;
    let name = format!("xenvault:{}:{}", a.disk.id, fs.volume().name);
    let mountpoint = a.mountpoint.clone();
    let mounted =
        tokio::task::spawn_blocking(move || xenvault_restore::mount::mount(&fs, &mountpoint, &name)).await?.map_err(
            |e| anyhow!("mounting on {} (FUSE: needs /dev/fuse and root or fusermount3): {e}", a.mountpoint.display()),
        )?;
    println!("mounted read-only on {}; Ctrl-C unmounts", a.mountpoint.display());
    use std::io::Write;
    std::io::stdout().flush()?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while !mounted.ended() {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await?
        .map_err(|e| anyhow!("unmounting {}: {e}", a.mountpoint.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum RestoreCommand {
    /// Restore the VM of a restore point: as a new VM (default) or over the original.
    Vm(RestoreVmArgs),
    /// Restore one disk of a restore point: over an existing VDI or into a new one.
    Disk(RestoreDiskArgs),
}

#[derive(Args)]
pub struct RestoreDiskArgs {
    #[command(flatten)]
    disk: DiskArgs,
    /// Pool name, as given to `pool add`.
    #[arg(long)]
    pool: String,
    #[command(flatten)]
    config: crate::pool_cmds::ConfigArg,
    /// Write over this VDI (uuid or name); it must have the stored disk's size.
    #[arg(long, required_unless_present = "sr", conflicts_with = "sr")]
    vdi: Option<String>,
    /// Create a new VDI on this SR (uuid or name).
    #[arg(long)]
    sr: Option<String>,
    /// Name of the new VDI (default: "<original name> (restored <time>)").
    #[arg(long, requires = "sr")]
    name: Option<String>,
    /// Attach the new VDI to this VM (uuid or name) ...
    #[arg(long, requires_all = ["sr", "device"])]
    attach: Option<String>,
    /// ... as this userdevice (a free position such as 1, 2, 3).
    #[arg(long, requires = "attach")]
    device: Option<String>,
    /// Plug the new disk into the VM at once when it is running.
    #[arg(long, requires = "attach")]
    plug: bool,
    /// With --vdi: write only what differs (CBT since a restore point's snapshot, else chunk hashes).
    #[arg(long, requires = "vdi")]
    differential: bool,
    /// With --vdi: write even when a running VM has the VDI attached (the guest sees its disk change under it).
    #[arg(long, requires = "vdi")]
    force: bool,
    /// With --vdi on a disk a VM uses: do not ask (needed without a terminal).
    #[arg(long, requires = "vdi")]
    yes: bool,
    #[arg(long)]
    json: bool,
}

/// One line on what a disk restore wrote, and how it found what differs.
fn describe(d: &xenvault_restore::vm::DiskRestore) -> String {
    let mut line = format!(
        "{} written of {}, {} sent",
        units::bytes(d.bytes_written),
        units::bytes(d.size),
        units::bytes(d.bytes_sent)
    );
    if let Some(method) = &d.method {
        let method = match method {
            xenvault_restore::differential::Method::Cbt => "CBT",
            xenvault_restore::differential::Method::Hash => "chunk hashes",
        };
        line += &format!(
            ", {} of the disk compared; differences by {method} ({})",
            units::bytes(d.bytes_compared),
            d.method_reason.as_deref().unwrap_or("")
        );
    }
    line
}

async fn restore_disk(a: RestoreDiskArgs) -> Result<ExitCode> {
    use xenvault_restore::disk::{Attach, DiskRestoreOptions, DiskTarget};
    let repo = a.disk.repo.open().await?;
    let m = a.disk.restore_point(&repo).await?;
    // A disk the restore point lacks is refused before the pool is contacted.
    m.disk(a.disk.disk.as_deref()).map_err(classify)?;
    let login = a.config.login(&a.pool)?;
    let client = xenvault_pool::host::connect(&login).await.map_err(crate::backup_cmds::auth_kind)?;
    // clap guarantees --vdi or --sr, and --device with --attach.
    let target = match (&a.vdi, &a.sr) {
        (Some(vdi), _) => {
            let vdi_uuid = resolve(&client, Kind::Vdi, vdi).await?;
            let users = inventory::vdi_users(&client, &vdi_uuid).await.map_err(crate::backup_cmds::auth_kind)?;
            if let Some(vm) = users.first() {
                let what = format!(
                    "--vdi {vdi} is a disk of VM {} ({}, {}): restoring replaces its content",
                    vm.name, vm.uuid, vm.power_state
                );
                crate::prompt::confirm_by_name(&what, &vm.name, a.yes)?;
            }
            DiskTarget::Existing { vdi_uuid }
        }
        (None, sr) => {
            let attach = match a.attach.as_deref().zip(a.device.clone()) {
                Some((vm, userdevice)) => {
                    Some(Attach { vm_uuid: resolve(&client, Kind::Vm, vm).await?, userdevice, plug: a.plug })
                }
                None => None,
            };
            DiskTarget::New {
                sr_uuid: resolve(&client, Kind::Sr, sr.as_deref().unwrap_or_default()).await?,
                name_label: a.name.clone(),
                attach,
            }
        }
    };
    let opts = DiskRestoreOptions { differential: a.differential, force: a.force, ..Default::default() };
    cancel_restore_on_signals(&opts.cancel)?;
    let report = xenvault_restore::disk::restore_disk(
        &client,
        &repo,
        &m,
        a.disk.disk.as_deref(),
        &target,
        &opts,
        crate::progress::Bars::new(a.json),
    )
    .await
    .map_err(restore_error)?;
    if a.json {
        print_json(&report)?;
    } else {
        let d = &report.disk;
        let what = if report.created { "new VDI" } else { "VDI" };
        println!(
            "restored disk {} of {} to {what} {} ({}) in {:.1} s",
            d.position,
            m.short_id(),
            report.name_label,
            d.vdi_uuid,
            d.seconds
        );
        println!("  {}", describe(d));
        if let Some(vbd) = &report.vbd_uuid {
            println!("  attached as VBD {vbd}{}", if report.plugged { ", plugged" } else { "" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RestoreVmArgs {
    /// Restore point id (or a prefix of at least 4 characters, or "latest").
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// The VM (name or uuid) whose restore points "latest" and prefixes choose from.
    #[arg(long, visible_alias = "vm")]
    source: Option<String>,
    /// Pool name, as given to `pool add`.
    #[arg(long)]
    pool: String,
    #[command(flatten)]
    config: crate::pool_cmds::ConfigArg,
    /// SR (uuid or name) for the new disks (default: the original SR, else the pool's default SR).
    #[arg(long, conflicts_with = "overwrite")]
    sr: Option<String>,
    /// Create a new VM beside the original (the default).
    #[arg(long, conflicts_with = "overwrite")]
    as_new: bool,
    /// Write the disks over the original VM's (it is shut down first; asks, or needs --yes).
    #[arg(long)]
    overwrite: bool,
    /// With --overwrite: do not ask (needed without a terminal).
    #[arg(long, requires = "overwrite")]
    yes: bool,
    /// Start the VM once restored.
    #[arg(long, conflicts_with = "as_template")]
    start: bool,
    /// With --overwrite: write only what differs (CBT since a restore point's snapshot, else chunk hashes of each disk).
    #[arg(long, requires = "overwrite")]
    differential: bool,
    /// Create the new VM as a template.
    #[arg(long, conflicts_with = "overwrite")]
    as_template: bool,
    /// New disks of stored SR OLD (uuid) go to SR NEW (uuid or name; repeatable; before --sr).
    #[arg(long = "sr-map", value_name = "OLD=NEW", value_parser = xenvault_restore::vm::parse_mapping, conflicts_with = "overwrite")]
    sr_map: Vec<(String, String)>,
    /// VIFs on stored network OLD (uuid or name) go to network NEW (uuid or name; repeatable).
    #[arg(long = "network-map", value_name = "OLD=NEW", value_parser = xenvault_restore::vm::parse_mapping, conflicts_with = "overwrite")]
    network_map: Vec<(String, String)>,
    /// MAC addresses of new VIFs: auto (stored ones unless the original VM exists), keep, new.
    #[arg(long, default_value = "auto", conflicts_with = "overwrite")]
    macs: xenvault_restore::vm::Macs,
    #[arg(long)]
    json: bool,
}

async fn restore_vm(a: RestoreVmArgs) -> Result<ExitCode> {
    use xenvault_restore::vm::{Mode, VmRestoreOptions};
    let repo = a.repo.open().await?;
    let m = restore_point(&repo, &a.id, a.source.as_deref()).await?;
    let login = a.config.login(&a.pool)?;
    let client = xenvault_pool::host::connect(&login).await.map_err(crate::backup_cmds::auth_kind)?;
    let sr = match &a.sr {
        Some(sr) => Some(resolve(&client, Kind::Sr, sr).await?),
        None => None,
    };
    let before = match a.overwrite {
        true => inventory::vm_state(&client, &m.source.id).await.map_err(crate::backup_cmds::auth_kind)?,
        false => None,
    };
    if let Some(vm) = &before {
        let halt = if vm.power_state.eq_ignore_ascii_case("halted") { "" } else { "; it is shut down first" };
        let what = format!("--overwrite replaces the disks of VM {} ({}, {}){halt}", vm.name, vm.uuid, vm.power_state);
        crate::prompt::confirm_by_name(&what, &vm.name, a.yes)?;
    }
    let opts = VmRestoreOptions {
        mode: if a.overwrite { Mode::Overwrite } else { Mode::AsNew },
        differential: a.differential,
        sr,
        as_template: a.as_template,
        sr_map: resolve_targets(&client, Kind::Sr, &a.sr_map).await?,
        network_map: resolve_targets(&client, Kind::Network, &a.network_map).await?,
        macs: a.macs,
        start: a.start,
        ..Default::default()
    };
    cancel_restore_on_signals(&opts.cancel)?;
    let bars = crate::progress::Bars::new(a.json);
    let report = xenvault_restore::vm::restore_vm(&client, &repo, &m, &opts, bars).await.map_err(restore_error)?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "restored {} as VM {} ({}) in {:.1} s",
            m.short_id(),
            report.name_label,
            report.vm_uuid,
            report.seconds
        );
        match (&report.power_state_before, &report.power_state_after) {
            (Some(before), Some(now)) => println!("  power state: {before} before, {now} now"),
            (None, Some(now)) => println!("  power state: {now}"),
            _ => {}
        }
        for d in &report.disks {
            println!("  disk {} ({}): {}", d.position, d.vdi_uuid, describe(d));
        }
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The uuid of the pool object named `wanted` (a uuid or a unique name).
pub(crate) async fn resolve(client: &xenvault_xapi::Client, kind: Kind, wanted: &str) -> Result<String> {
    inventory::resolve(client, kind, wanted).await.map_err(crate::backup_cmds::auth_kind)
}

/// OLD=NEW mappings with each NEW resolved to a uuid.
async fn resolve_targets(
    client: &xenvault_xapi::Client,
    kind: Kind,
    map: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (old, new) in map {
        out.push((old.clone(), resolve(client, kind, new).await?));
    }
    Ok(out)
}

/// A disk of a restore point.
#[derive(Args)]
pub struct DiskArgs {
    /// Restore point id (or a prefix of at least 4 characters, or "latest").
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// The VM (name or uuid) whose restore points "latest" and prefixes choose from.
    #[arg(long, visible_alias = "vm")]
    source: Option<String>,
    /// Disk position (the VBD userdevice, or the image's place in backup-image), VDI uuid or
    /// name (default: the disk at the lowest position).
    #[arg(long)]
    disk: Option<String>,
}

impl DiskArgs {
    async fn restore_point(&self, repo: &Repository) -> Result<xenvault_repo::Manifest> {
        restore_point(repo, &self.id, self.source.as_deref()).await
    }

    async fn open(&self) -> Result<(Repository, Arc<DiskReader>)> {
        let repo = self.repo.open().await?;
        let m = self.restore_point(&repo).await?;
        let disk = m.disk(self.disk.as_deref()).map_err(classify)?;
        let reader = DiskReader::new(&repo, disk).await.map_err(classify)?;
        Ok((repo, Arc::new(reader)))
    }

    async fn repo_disk(&self) -> Result<RepoDisk> {
        let (_, reader) = self.open().await?;
        Ok(RepoDisk::new(reader, tokio::runtime::Handle::current()))
    }

    async fn file_system(&self, partition: Option<String>) -> Result<StoredFs> {
        StoredFs::open(self.repo_disk().await?, partition).await.map_err(restore_error)
    }
}

/// Wrong keys and refused credentials keep their exit code through the restore layer.
fn cancel_restore_on_signals(cancel: &CancellationToken) -> Result<()> {
    crate::backup_cmds::cancel_on_signals(
        cancel.clone(),
        "stopping the restore: what it created is removed, overwritten disks are put back as they were",
        "what the restore created or began to overwrite is left as it is",
    )
}

pub(crate) fn restore_error(e: xenvault_restore::Error) -> anyhow::Error {
    match e {
        xenvault_restore::Error::Repo(e) => classify(e),
        // Its message is the file system's own: keep the chain from saying it twice.
        xenvault_restore::Error::Fs(e) => anyhow::Error::new(e),
        xenvault_restore::Error::Xapi(e) if e.to_string().contains("SESSION_AUTHENTICATION_FAILED") => {
            anyhow::Error::new(e).context(crate::exit::ExitKind::Auth)
        }
        xenvault_restore::Error::Pool(e) => crate::backup_cmds::auth_kind(e),
        e @ xenvault_restore::Error::AmbiguousVolume { .. } => {
            anyhow::Error::new(e).context("choose a volume with --partition")
        }
        other => anyhow::Error::new(other),
    }
}

#[derive(Subcommand)]
pub enum FilesCommand {
    /// List the volumes (partitions, LVs) of a disk.
    Volumes {
        #[command(flatten)]
        disk: DiskArgs,
        #[arg(long)]
        json: bool,
    },
    /// List a directory (default `/`).
    Ls {
        #[command(flatten)]
        disk: DiskArgs,
        /// Volume: p1, p5, vg/lv or disk (default: the largest file system).
        #[arg(long)]
        partition: Option<String>,
        #[arg(default_value = "/")]
        path: String,
        /// Mode, owner, size and modification time of each entry.
        #[arg(short, long)]
        long: bool,
        #[arg(long)]
        json: bool,
    },
    /// Find entries by glob: `*.conf` matches names, `/home/**/*.txt` whole paths.
    Find {
        #[command(flatten)]
        disk: DiskArgs,
        #[arg(long)]
        partition: Option<String>,
        pattern: String,
        /// Mode, owner, size and modification time of each entry.
        #[arg(short, long)]
        long: bool,
        #[arg(long)]
        json: bool,
    },
    /// Extract a file or directory tree with permissions, times and symlinks.
    Get {
        #[command(flatten)]
        disk: DiskArgs,
        #[arg(long)]
        partition: Option<String>,
        path: String,
        /// Destination: becomes the file or directory; an existing directory is filled, nothing
        /// else that exists is overwritten or followed. `-`: the file's content to stdout.
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// `drwxr-xr-x` as `ls -l` shows it, setuid/setgid/sticky included.
fn mode_string(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::File => '-',
        EntryKind::Other => '?',
    });
    for (shift, special, on, off) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// Paths (directories end in `/`), or with `long` an `ls -l` table.
fn print_entries(entries: &[Entry], json: bool, long: bool) -> Result<()> {
    if json {
        return print_json(&entries);
    }
    if !long {
        crate::output::lines(
            entries
                .iter()
                .map(|e| format!("{}{}", e.path, if e.kind == EntryKind::Dir && e.path != "/" { "/" } else { "" })),
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let time = chrono::DateTime::from_timestamp(e.mtime, e.mtime_nsec)
                .map(crate::output::time)
                .unwrap_or_else(|| e.mtime.to_string());
            let link = e.symlink_target.as_deref().map(|t| format!(" -> {t}")).unwrap_or_default();
            vec![
                mode_string(e.kind, e.mode),
                e.uid.to_string(),
                e.gid.to_string(),
                e.size.to_string(),
                time,
                format!("{}{link}", e.path),
            ]
        })
        .collect();
    crate::output::table(&["MODE", "UID", "GID", "SIZE", "MODIFIED", "PATH"], &rows, &[1, 2, 3]);
    Ok(())
}

async fn files(cmd: FilesCommand) -> Result<ExitCode> {
    match cmd {
        FilesCommand::Volumes { disk, json } => {
            let vols = xenvault_restore::files::volumes(disk.repo_disk().await?).await.map_err(restore_error)?;
            if json {
                print_json(&vols)?;
            } else {
                for v in &vols {
                    println!("{:<16} {:>10} {:<12} {}", v.name, units::bytes(v.size), v.content, v.description);
                }
            }
        }
        FilesCommand::Ls { disk, partition, path, long, json } => {
            let fs = disk.file_system(partition).await?;
            let entries = fs.list(&path).await.map_err(restore_error)?;
            print_entries(&entries, json, long)?;
        }
        FilesCommand::Find { disk, partition, pattern, long, json } => {
            let fs = disk.file_system(partition).await?;
            let entries = fs.find(&pattern).await.map_err(restore_error)?;
            print_entries(&entries, json, long)?;
        }
        FilesCommand::Get { disk, partition, path, to, json } => {
            let fs = disk.file_system(partition).await?;
            if to.as_os_str() == "-" {
                fs.copy_file(&path, std::io::stdout()).await.map_err(restore_error)?;
                return Ok(ExitCode::SUCCESS);
            }
            let started = std::time::Instant::now();
            let stats = fs.extract(&path, &to).await.map_err(restore_error)?;
            let secs = started.elapsed().as_secs_f64();
            if json {
                print_json(&serde_json::json!({
                    "volume": fs.volume().name, "path": path, "to": to, "files": stats.files, "dirs": stats.dirs,
                    "symlinks": stats.symlinks, "skipped": stats.skipped, "bytes": stats.bytes, "seconds": secs,
                }))?;
            } else {
                println!(
                    "extracted {} files, {} dirs, {} symlinks ({}) from {}:{} to {} in {:.1} s",
                    stats.files,
                    stats.dirs,
                    stats.symlinks,
                    units::bytes(stats.bytes),
                    fs.volume().name,
                    path,
                    to.display(),
                    secs
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ServeNbdArgs {
    #[command(flatten)]
    disk: DiskArgs,
    /// Address to listen on. Not NBD's own 10809 by default: xapi-nbd and the simulator hold it.
    #[arg(long, default_value = "127.0.0.1:10810")]
    listen: String,
    /// Accept writes into a throw-away in-memory overlay (the repository is never written).
    #[arg(long)]
    writable_overlay: bool,
    /// Require TLS with this certificate (PEM, chain allowed); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require TLS with a fresh self-signed certificate; prints its SHA-256 fingerprint and PEM.
    #[arg(long, conflicts_with = "tls_cert")]
    tls: bool,
}

/// The TLS identity asked for, if any. A generated certificate names the listen host and loopback.
fn tls_identity(a: &ServeNbdArgs, addr: std::net::SocketAddr) -> Result<Option<ServerIdentity>> {
    Ok(match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(ServerIdentity::load(cert, key)?),
        _ if a.tls => {
            let names = xenvault_restore::nbd::listener_names(&a.listen, addr);
            Some(ServerIdentity::self_signed(names, "xenvault serve-nbd")?)
        }
        _ => None,
    })
}

async fn serve_nbd(a: ServeNbdArgs) -> Result<ExitCode> {
    let (_repo, reader) = a.disk.open().await?;
    let name = reader.disk().name.clone();
    let export = if a.writable_overlay { DiskExport::with_overlay(reader) } else { DiskExport::read_only(reader) };
    let listener =
        tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| anyhow!("listening on {}: {e}", a.listen))?;
    let addr = listener.local_addr()?;
    let identity = tls_identity(&a, addr).map_err(|e| e.context("setting up TLS"))?;
    let tls =
        identity.as_ref().map(ServerIdentity::server_config).transpose().map_err(|e| anyhow!("setting up TLS: {e}"))?;
    println!("{}://{addr}/{name}", if tls.is_some() { "nbds" } else { "nbd" });
    if let Some(id) = identity.as_ref().filter(|_| a.tls) {
        println!("certificate sha256 {}", id.fingerprint()?);
        print!("{}", id.cert_pem);
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    let resolver = Arc::new(SingleExport { name, export: Arc::new(export) });
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    xenvault_nbd::serve(listener, xenvault_nbd::ServerConfig::modern(tls), resolver, stop).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    disk: DiskArgs,
    /// raw, vhd (dynamic), qcow2 (one disk), or xva (the whole VM; --disk is ignored).
    #[arg(long, value_parser = ["raw", "vhd", "qcow2", "xva"])]
    format: String,
    /// Output file, or - for stdout.
    #[arg(long)]
    to: PathBuf,
    #[arg(long)]
    json: bool,
}

async fn export_cmd(a: ExportArgs) -> Result<ExitCode> {
    if a.format == "xva" {
        return export_xva(a).await;
    }
    let format: DiskFormat = a.format.parse().map_err(|e: String| anyhow!(e))?;
    let disk = a.disk.repo_disk().await?;
    let to_stdout = a.to.as_os_str() == "-";
    let stored = disk.reader().disk();
    let key = Key::new(None, Some(stored.position), Phase::Export);
    let task = crate::progress::task(a.json || to_stdout, key, stored.name.clone(), stored.size);
    let out = output(&a.to)?;
    let stats = tokio::task::spawn_blocking(move || export(&disk, format, out, &task, &CancellationToken::new()))
        .await?
        .map_err(restore_error)?;
    if a.json {
        print_json(&serde_json::json!({"format": format, "to": a.to, "stats": stats}))?;
    } else if !to_stdout {
        println!(
            "exported {} as {} to {} ({} written) in {:.1} s",
            units::bytes(stats.disk_bytes),
            a.format.to_uppercase(),
            a.to.display(),
            units::bytes(stats.output_bytes),
            stats.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn output(to: &std::path::Path) -> Result<Box<dyn std::io::Write + Send>> {
    Ok(if to.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(to).map_err(|e| anyhow!("creating {}: {e}", to.display()))?)
    })
}

async fn export_xva(a: ExportArgs) -> Result<ExitCode> {
    let repo = a.disk.repo.open().await?;
    let m = a.disk.restore_point(&repo).await?;
    let key = Key::new(Some(&m.source.id), None, Phase::Export);
    let task = crate::progress::task(a.json || a.to.as_os_str() == "-", key, m.source.name.clone(), m.total_size());
    let out = output(&a.to)?;
    let started = std::time::Instant::now();
    let m2 = m.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        xenvault_restore::xva::export_xva(&repo, &m2, out, &task, &CancellationToken::new())
    })
    .await?
    .map_err(restore_error)?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        print_json(&serde_json::json!({"format": "xva", "to": a.to, "disk_bytes": bytes, "seconds": secs}))?;
    } else if a.to.as_os_str() != "-" {
        println!(
            "exported VM {} ({}) as XVA to {} in {:.1} s",
            m.source.name,
            units::bytes(bytes),
            a.to.display(),
            secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: Commands) -> Result<ExitCode> {
    match cmd {
        Commands::Files(c) => files(c).await,
        Commands::ServeNbd(a) => serve_nbd(a).await,
        Commands::Export(a) => export_cmd(a).await,
        Commands::Restore(RestoreCommand::Vm(a)) => restore_vm(a).await,
        Commands::Restore(RestoreCommand::Disk(a)) => restore_disk(a).await,
        Commands::Mount(a) => mount(a).await,
        Commands::Dump { disk, partition, path } => {
            let fs = disk.file_system(partition).await?;
            fs.copy_file(&path, std::io::stdout()).await.map_err(restore_error)?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Diff(a) => diff(a).await,
    }
}
