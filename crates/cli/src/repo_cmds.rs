//! Repository commands: init, backup-image, snapshots, restore-image, verify, forget,
//! prune, key, copy. The work lives in `xenvault_repo`; this module parses, reports
//! (text or `--json`) and maps errors to exit codes.

use crate::exit::{self, ExitKind};
use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use xenvault_repo::backend::BackendOptions;
use xenvault_repo::keys::{Encryption, KdfParams, Secret, new_key_file_content};
use xenvault_repo::select::{self, SelectError};
use xenvault_repo::{DiskReader, InitOptions, Manifest, Repository};
use xenvault_types::progress::{Key, Phase};
use xenvault_types::units;

#[derive(Subcommand)]
pub enum Commands {
    /// Create a repository.
    Init(InitArgs),
    /// Back up disk image files (raw or VHD) as one restore point.
    BackupImage(BackupImageArgs),
    /// List restore points.
    Snapshots(SnapshotsArgs),
    /// Restore one disk of a restore point into a file.
    RestoreImage(RestoreImageArgs),
    /// Check stored data; exits 3 when it finds damage.
    Verify(VerifyArgs),
    /// Remove restore points by id or by retention policy.
    Forget(ForgetArgs),
    /// Delete data no restore point references (safe while backups run).
    Prune(PruneArgs),
    /// Manage the keys that open the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Copy restore points to another repository (only missing chunks move).
    Copy(CopyArgs),
    /// Restore points, disk bytes and stored bytes per VM, and the deduplication ratio.
    Stats(StatsArgs),
    /// Remove the locks of runs that died or hang; list the live ones.
    Unlock(UnlockArgs),
    /// Add or remove tags of a restore point (its manifest stays as written).
    Tag(TagArgs),
}

/// Where the repository is and how to open it.
#[derive(Args, Clone)]
pub struct RepoArgs {
    /// A path, s3://bucket/prefix, azblob://container/prefix, nfs://host/export/path or
    /// smb://[user@]host/share/path.
    #[arg(long, env = "XENVAULT_REPO")]
    repo: String,
    /// File holding the passphrase (else $XENVAULT_PASSPHRASE, --password-command, or a prompt on a terminal).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Command printing the passphrase (e.g. `pass show xenvault`), run with sh -c.
    #[arg(long, env = "XENVAULT_PASSWORD_COMMAND", conflicts_with = "passphrase_file")]
    password_command: Option<String>,
    /// Open with a key file instead of a passphrase.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// S3 endpoint (else $AWS_ENDPOINT_URL).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// S3 region (else $AWS_REGION).
    #[arg(long)]
    s3_region: Option<String>,
    /// Azure Blob endpoint (else $AZURE_STORAGE_ENDPOINT).
    #[arg(long)]
    azure_endpoint: Option<String>,
    /// Azure storage account (else $AZURE_STORAGE_ACCOUNT).
    #[arg(long)]
    azure_account: Option<String>,
}

impl RepoArgs {
    pub(crate) fn backend(&self) -> BackendOptions {
        let from_environment = crate::environment::backend_options();
        BackendOptions {
            s3_endpoint: self.s3_endpoint.clone().or(from_environment.s3_endpoint),
            s3_region: self.s3_region.clone().or(from_environment.s3_region),
            azure_endpoint: self.azure_endpoint.clone().or(from_environment.azure_endpoint),
            azure_account: self.azure_account.clone().or(from_environment.azure_account),
            ..from_environment
        }
    }

    fn secret(&self) -> Result<Option<Secret>> {
        if let Some(path) = &self.key_file {
            let bytes = std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
            return Ok(Some(Secret::key_file(trim_newline(bytes))));
        }
        if let Some(command) = &self.password_command {
            return password_command(command).map(Some);
        }
        match passphrase(self.passphrase_file.as_deref(), "XENVAULT_PASSPHRASE")? {
            Some(secret) => Ok(Some(secret)),
            None if crate::prompt::interactive() => {
                Ok(Some(Secret::passphrase(crate::prompt::secret(&format!("passphrase for {}: ", self.repo))?)))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn open(&self) -> Result<Repository> {
        let secret = self.secret()?;
        Repository::open(&self.repo, &self.backend(), secret.as_ref()).await.map_err(classify)
    }
}

/// The passphrase a command prints (its first line); a failing command is an error.
fn password_command(command: &str) -> Result<Secret> {
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running --password-command {command:?}"))?;
    if !out.status.success() {
        return Err(anyhow!("--password-command {command:?} failed ({})", out.status));
    }
    let text =
        String::from_utf8(out.stdout).map_err(|_| anyhow!("--password-command printed something that is not UTF-8"))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(anyhow!("--password-command {command:?} printed no passphrase").context(ExitKind::Usage));
    }
    Ok(Secret::passphrase(line.to_owned()))
}

fn trim_newline(mut b: Vec<u8>) -> Vec<u8> {
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    b
}

/// A passphrase from `file`, else from the environment variable `var`.
pub(crate) fn passphrase(file: Option<&Path>, var: &str) -> Result<Option<Secret>> {
    if let Some(path) = file {
        let raw = std::fs::read(path).with_context(|| format!("reading passphrase file {}", path.display()))?;
        let text = String::from_utf8(trim_newline(raw)).map_err(|_| anyhow!("passphrase file is not UTF-8"))?;
        return Ok(Some(Secret::passphrase(text)));
    }
    Ok(crate::environment::var(var).map(Secret::passphrase))
}

/// Wrong keys and refused credentials exit with AUTH, a missing passphrase with USAGE;
/// everything else with FAILURE.
pub(crate) fn classify(e: xenvault_repo::Error) -> anyhow::Error {
    use xenvault_repo::backend::BackendError;
    let kind = match e {
        xenvault_repo::Error::WrongKey | xenvault_repo::Error::Backend(BackendError::AccessDenied { .. }) => {
            Some(ExitKind::Auth)
        }
        xenvault_repo::Error::KeyNeeded => Some(ExitKind::Usage),
        _ => None,
    };
    let hint = match e {
        xenvault_repo::Error::KeyNeeded => {
            Some("no passphrase: set XENVAULT_PASSPHRASE or give --passphrase-file, --password-command or --key-file")
        }
        _ => None,
    };
    let e = anyhow::Error::new(e);
    let e = match hint {
        Some(hint) => e.context(hint),
        None => e,
    };
    match kind {
        Some(kind) => e.context(kind),
        None => e,
    }
}

fn kdf_memory_mib(s: &str) -> Result<u32, String> {
    let max = xenvault_repo::keys::MAX_KDF_MEMORY_MIB;
    s.parse().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| format!("expected 1 to {max} (MiB), not {s:?}"))
}

fn kdf_iterations(s: &str) -> Result<u32, String> {
    let max = xenvault_repo::keys::MAX_KDF_ITERATIONS;
    s.parse().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| format!("expected 1 to {max}, not {s:?}"))
}

fn sample_percent(s: &str) -> Result<f64, String> {
    let pct: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    xenvault_repo::verify::check_sample_percent(pct).map_err(|e| e.to_string())?;
    Ok(pct)
}

fn parse_size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
                "k" => 1u64 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "" => 1,
                other => return Err(format!("unknown size unit {other:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("not a size: {s:?}"))?;
    u32::try_from(n * mult).map_err(|_| format!("size too large: {s}"))
}

/// Prints `v` as JSON; a reader that went away (`| head`) ends the output quietly.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// aes-256-gcm, or none (explicitly unencrypted).
    #[arg(long, default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "none"])]
    encryption: String,
    /// Chunk size (64K … 16M; a power of two). 256K measured fastest here: chunks that
    /// fit in L2 cache keep zero-check, hashing, compression and sealing in cache.
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    chunk_size: u32,
    /// Target pack file size.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pack_size: u32,
    #[arg(long, default_value_t = 1)]
    zstd_level: i32,
    /// Argon2id memory in MiB for the passphrase slot.
    #[arg(long, default_value_t = 64, value_parser = kdf_memory_mib)]
    kdf_memory_mib: u32,
    #[arg(long, default_value_t = 3, value_parser = kdf_iterations)]
    kdf_iterations: u32,
    /// Create a new key file at this path and open the repository with it (instead of a passphrase).
    #[arg(long, conflicts_with = "key_file")]
    new_key_file: Option<PathBuf>,
    /// Derive chunk ids like this repository (so `copy` from it moves only missing chunks).
    #[arg(long)]
    chunk_ids_from: Option<String>,
    /// Passphrase file of --chunk-ids-from (else $XENVAULT_FROM_PASSPHRASE).
    #[arg(long)]
    from_passphrase_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

async fn init(a: InitArgs) -> Result<ExitCode> {
    let encryption = if a.encryption == "none" { Encryption::None } else { Encryption::Aes256Gcm };
    let secret = match &a.new_key_file {
        Some(path) => {
            let content = new_key_file_content()?;
            write_private(path, &content)?;
            Some(Secret::key_file(content))
        }
        None => a.repo.secret()?,
    };
    if encryption == Encryption::Aes256Gcm && secret.is_none() {
        return Err(anyhow!(
            "an encrypted repository needs a passphrase ($XENVAULT_PASSPHRASE or --passphrase-file) or --new-key-file; \
             or choose --encryption none"
        ));
    }
    let chunk_ids_from = match &a.chunk_ids_from {
        Some(loc) => {
            let s = passphrase(a.from_passphrase_file.as_deref(), "XENVAULT_FROM_PASSPHRASE")?;
            Some(Repository::open(loc, &a.repo.backend(), s.as_ref()).await.map_err(classify)?)
        }
        None => None,
    };
    let opts = InitOptions {
        encryption,
        secret,
        kdf: KdfParams {
            memory_kib: a.kdf_memory_mib.saturating_mul(1024),
            iterations: a.kdf_iterations,
            parallelism: 1,
        },
        chunk_size: a.chunk_size,
        pack_size: a.pack_size,
        zstd_level: a.zstd_level,
        chunk_ids_from,
        ..Default::default()
    };
    let repo = Repository::init(&a.repo.repo, &a.repo.backend(), opts).await.map_err(classify)?;
    if a.json {
        print_json(&serde_json::json!({"id": repo.id(), "location": repo.location(), "config": repo.config()}))?;
    } else {
        println!("created repository {} at {}", repo.id(), repo.location());
    }
    if encryption == Encryption::Aes256Gcm && a.new_key_file.is_none() {
        eprintln!(
            "keep the passphrase safe: without it the backups cannot be read, by anyone. A key file is a second way in: \
             xenvault key add --new-key-file PATH --repo {} (store it apart from the repository)",
            repo.location()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(content)?;
    Ok(())
}

#[derive(Args)]
pub struct BackupImageArgs {
    /// Image files; each becomes one disk of the restore point.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    repo: RepoArgs,
    /// Groups restore points for retention (default: the first file's absolute path).
    #[arg(long)]
    source_id: Option<String>,
    /// auto (a VHD by its footer, else raw; files that look like another image format, or
    /// are named .vhd without being one, are refused), raw (the bytes as they are) or vhd.
    #[arg(long, default_value = "auto")]
    format: xenvault_repo::ImageFormat,
    #[arg(long)]
    tag: Vec<String>,
    #[arg(long)]
    json: bool,
}

async fn backup_image(a: BackupImageArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let options = xenvault_repo::image::ImageBackupOptions {
        files: a.files.clone(),
        format: a.format,
        source_id: a.source_id.clone(),
        tags: a.tag.clone(),
    };
    let report = xenvault_repo::image::backup_images(&repo, &options, crate::progress::Bars::new(a.json))
        .await
        .map_err(classify)?;
    if a.json {
        return print_json(&report).map(|_| ExitCode::SUCCESS);
    }
    let m = &report.snapshot;
    println!(
        "restore point {} ({}) in {:.1} s, {}",
        m.id,
        units::bytes(m.total_size()),
        report.seconds,
        units::rate(m.total_size(), report.seconds)
    );
    for d in &m.disks {
        let s = &d.stats;
        println!(
            "  {}: {} read, {} zero, {} new → {} stored, {} chunks reused",
            d.name,
            units::bytes(s.bytes_read),
            units::bytes(s.bytes_zero),
            units::bytes(s.bytes_new),
            units::bytes(s.bytes_stored),
            s.chunks_reused
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only restore points of this VM (name or uuid) or other source id.
    #[arg(long, visible_alias = "vm")]
    source: Option<String>,
    /// Only restore points of this backup job.
    #[arg(long)]
    job: Option<String>,
    /// Only restore points taken from this pool (registered name) or host (name).
    #[arg(long)]
    host: Option<String>,
    /// Only restore points with this tag (repeatable: all of them).
    #[arg(long)]
    tag: Vec<String>,
    /// Only restore points taken at or after this time (RFC 3339, or a date YYYY-MM-DD in UTC).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only restore points taken at or before this time (RFC 3339, or a date: its end, in UTC).
    #[arg(long, value_parser = parse_time_end)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only the newest N restore points of each VM.
    #[arg(long, value_name = "N")]
    latest: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn parse_date_or_time(s: &str, end_of_day: bool) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?}: give YYYY-MM-DD or an RFC 3339 time"))?;
    let time = if end_of_day { day.and_hms_opt(23, 59, 59) } else { day.and_hms_opt(0, 0, 0) };
    time.map(|t| t.and_utc()).ok_or_else(|| format!("{s:?}: not a time"))
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    parse_date_or_time(s, false)
}

fn parse_time_end(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    parse_date_or_time(s, true)
}

/// A too-short or ambiguous id is a usage error; the rest keep the repository's codes.
pub(crate) fn select_error(e: SelectError) -> anyhow::Error {
    match e {
        SelectError::Repo(e) => classify(e),
        e @ (SelectError::TooShort { .. } | SelectError::Ambiguous { .. }) => {
            anyhow::Error::new(e).context(ExitKind::Usage)
        }
        e => anyhow::Error::new(e),
    }
}

/// The restore point `wanted` names (`latest` of `source` when given, an id or a prefix).
pub(crate) async fn restore_point(repo: &Repository, wanted: &str, source: Option<&str>) -> Result<Manifest> {
    select::restore_point(repo, wanted, source).await.map_err(select_error)
}

async fn snapshots(a: SnapshotsArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let filter = select::Filter {
        source: a.source.clone(),
        job: a.job.clone(),
        host: a.host.clone(),
        tags: a.tag.clone(),
        since: a.since,
        until: a.until,
        latest_per_source: a.latest,
    };
    let list = filter.apply(repo.restore_points().await.map_err(classify)?);
    if a.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m.short_id().to_owned(),
                crate::output::time(m.time),
                m.source.name.clone(),
                m.disks.len().to_string(),
                units::bytes(m.total_size()),
                m.tags.join(","),
            ]
        })
        .collect();
    crate::output::table(&["ID", "TIME", "VM", "DISKS", "SIZE", "TAGS"], &rows, &[3, 4]);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RestoreImageArgs {
    /// Restore point id (or unique prefix, or "latest").
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Output file or block device (created or truncated; holes stay sparse), or - for stdout.
    #[arg(long)]
    to: PathBuf,
    /// Disk position (the VBD userdevice, or the image's place in backup-image), VDI uuid or
    /// name (default: the disk at the lowest position).
    #[arg(long)]
    disk: Option<String>,
    #[arg(long)]
    json: bool,
}

async fn restore_image(a: RestoreImageArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let m = restore_point(&repo, &a.id, None).await?;
    let disk = m.disk(a.disk.as_deref()).map_err(classify)?;
    let reader = DiskReader::new(&repo, disk).await.map_err(classify)?;
    let to_stdout = a.to.as_os_str() == "-";
    let to = if to_stdout { std::path::Path::new("/dev/stdout") } else { a.to.as_path() };
    let key = Key::disk(&m.source.id, disk.position, Phase::Export);
    let task = crate::progress::task(a.json || to_stdout, key, disk.name.clone(), disk.size);
    let stats = reader.restore_to_file(to, task, &CancellationToken::new()).await.map_err(classify)?;
    if to_stdout {
        // stdout holds the disk: no report.
    } else if a.json {
        print_json(&serde_json::json!({"snapshot": m.id, "disk": disk.name, "to": a.to, "stats": stats}))?;
    } else {
        println!(
            "restored {} ({}) of {} to {} in {:.1} s, {}",
            disk.name,
            units::bytes(stats.bytes),
            m.short_id(),
            a.to.display(),
            stats.seconds,
            units::rate(stats.bytes, stats.seconds)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Check only this share of packs (percent, more than 0 and at most 100), chosen at random.
    #[arg(long, value_parser = sample_percent)]
    sample: Option<f64>,
    #[arg(long)]
    json: bool,
}

async fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let bars = crate::progress::Bars::new(a.json);
    let report =
        xenvault_repo::verify::verify(&repo, a.sample, bars, &CancellationToken::new()).await.map_err(classify)?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} of {} packs, {} chunks ({}), {} restore points",
            report.packs_checked,
            report.packs_total,
            report.chunks_checked,
            units::bytes(report.bytes_checked),
            report.restore_points_checked
        );
        for b in &report.bad_chunks {
            println!("bad chunk {} in pack {}: {}", b.id, b.pack, b.reason);
        }
        for d in &report.damaged_indexes {
            let outcome = if d.rebuilt { "rebuilt from the pack" } else { "its chunks are unusable" };
            println!("damaged index of pack {} ({outcome}): {}", d.pack, d.reason);
        }
        for object in &report.damaged_key_objects {
            println!("damaged copy {object} (rewritten from its intact copy)");
        }
        for (id, problems) in &report.damaged_restore_points {
            println!("damaged restore point {id}:");
            for p in problems {
                println!("  {p}");
            }
        }
        if report.found_damage() {
            println!("damage found: the next backup of the same data re-stores the bad chunks");
        } else {
            println!("no damage found");
        }
    }
    Ok(ExitCode::from(if report.found_damage() { exit::DAMAGE_FOUND } else { 0 }))
}

/// Retention rules (`--keep-*`); all zero keeps everything.
#[derive(Args, Clone, Copy)]
pub struct KeepArgs {
    /// Keep the newest N restore points of each VM.
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest restore point of each of the last N hours (per VM).
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest restore point of each of the last N days (per VM).
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest restore point of each of the last N weeks (per VM).
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest restore point of each of the last N months (per VM).
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// Keep the newest restore point of each of the last N years (per VM).
    #[arg(long, default_value_t = 0)]
    keep_yearly: u32,
}

impl KeepArgs {
    pub(crate) fn policy(&self) -> xenvault_repo::prune::KeepPolicy {
        xenvault_repo::prune::KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        }
    }
}

#[derive(Args)]
pub struct ForgetArgs {
    /// Restore point ids to remove (instead of a policy).
    ids: Vec<String>,
    #[command(flatten)]
    repo: RepoArgs,
    /// Apply the policy only to this VM (name or uuid) or other source id.
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    keep: KeepArgs,
    /// Show what would go, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    prune: bool,
    #[arg(long)]
    json: bool,
}

async fn forget(a: ForgetArgs) -> Result<ExitCode> {
    use xenvault_repo::forget::{Action, Forget, ForgetOptions};
    let policy = a.keep.policy();
    let forget = match (a.ids.is_empty(), policy.is_empty()) {
        (true, true) => return Err(usage("give restore point ids or --keep-* rules")),
        (false, false) => return Err(usage("give restore point ids or --keep-* rules, not both")),
        (false, true) => Forget::Named(a.ids.clone()),
        (true, false) => Forget::Policy { policy, source: a.source.clone() },
    };
    let repo = a.repo.open().await?;
    let options = ForgetOptions { forget, dry_run: a.dry_run, prune: a.prune };
    let report = xenvault_repo::forget::forget(&repo, &options).await.map_err(select_error)?;
    if a.json {
        return print_json(&report).map(|_| ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = report
        .entries
        .iter()
        .map(|e| {
            let action = match e.action {
                Action::Keep => "keep",
                Action::Remove => "removed",
                Action::WouldRemove => "would remove",
            };
            let rule = match e.rules.as_slice() {
                [] if a.ids.is_empty() => "no rule".to_owned(),
                [] => "named".to_owned(),
                [one] => one.to_string(),
                several => {
                    format!("several ({})", several.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                }
            };
            vec![
                action.to_owned(),
                e.id.get(..8).unwrap_or(&e.id).to_owned(),
                crate::output::time(e.time),
                rule,
                e.source.clone(),
            ]
        })
        .collect();
    crate::output::table(&["ACTION", "ID", "TIME", "RULE", "VM"], &rows, &[]);
    let verb = if a.dry_run { "would remove" } else { "removed" };
    println!("{} kept, {} {verb}", report.keep.len(), report.remove.len());
    if let Some(r) = &report.prune {
        print_gc(r);
    }
    Ok(ExitCode::SUCCESS)
}

fn usage(message: &str) -> anyhow::Error {
    anyhow!(message.to_owned()).context(ExitKind::Usage)
}

pub(crate) fn print_gc(r: &xenvault_repo::gc::GcReport) {
    println!("freed {} in {} packs", units::bytes(r.bytes_deleted), r.packs_deleted);
    println!(
        "prune: {} packs, {} referenced, {} newly unreferenced, {} ({}) waiting for {} running backup(s)",
        r.packs_total,
        r.packs_referenced,
        r.packs_condemned,
        r.packs_waiting,
        units::bytes(r.bytes_waiting),
        r.backups_running
    );
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long)]
    json: bool,
}

async fn prune(a: PruneArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let r = xenvault_repo::gc::gc(&repo).await.map_err(classify)?;
    if a.json {
        print_json(&r)?
    } else {
        print_gc(&r)
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List key slots.
    List {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        json: bool,
    },
    /// Add a passphrase ($XENVAULT_NEW_PASSPHRASE or --new-passphrase-file) or a new key file.
    Add {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        new: NewKeyArgs,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Remove a key slot by id (never the last one).
    Remove {
        id: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Change the passphrase of the slot the current passphrase opens.
    Passwd {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        new: NewKeyArgs,
    },
}

#[derive(Args)]
pub struct NewKeyArgs {
    #[arg(long)]
    new_passphrase_file: Option<PathBuf>,
    /// Create a key file here instead of a passphrase.
    #[arg(long)]
    new_key_file: Option<PathBuf>,
    #[arg(long, default_value_t = 64, value_parser = kdf_memory_mib)]
    kdf_memory_mib: u32,
    #[arg(long, default_value_t = 3, value_parser = kdf_iterations)]
    kdf_iterations: u32,
}

impl NewKeyArgs {
    fn secret(&self) -> Result<Secret> {
        if let Some(path) = &self.new_key_file {
            let content = new_key_file_content()?;
            write_private(path, &content)?;
            return Ok(Secret::key_file(content));
        }
        passphrase(self.new_passphrase_file.as_deref(), "XENVAULT_NEW_PASSPHRASE")?
            .ok_or_else(|| anyhow!("no new passphrase: set $XENVAULT_NEW_PASSPHRASE or --new-passphrase-file"))
    }

    fn params(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.kdf_memory_mib.saturating_mul(1024),
            iterations: self.kdf_iterations,
            parallelism: 1,
        }
    }
}

async fn key(cmd: KeyCommand) -> Result<ExitCode> {
    use xenvault_repo::keyring;
    match cmd {
        KeyCommand::List { repo, json } => {
            let keys = keyring::list(&repo.open().await?).await.map_err(classify)?;
            if json {
                print_json(&keys)?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| vec![k.id.clone(), k.kind.to_owned(), crate::output::time(k.created), k.label.clone()])
                    .collect();
                crate::output::table(&["ID", "KIND", "CREATED", "LABEL"], &rows, &[]);
            }
        }
        KeyCommand::Add { repo, new, label } => {
            let repo = repo.open().await?;
            let key = keyring::add(&repo, &new.secret()?, new.params(), &label).await.map_err(classify)?;
            println!("added key slot {}", key.id);
        }
        KeyCommand::Remove { id, repo } => {
            let key = keyring::remove(&repo.open().await?, &id).await.map_err(classify)?;
            println!("removed key slot {}", key.id);
        }
        KeyCommand::Passwd { repo: args, new } => {
            let repo = args.open().await?;
            let current = args.secret()?.ok_or_else(|| classify(xenvault_repo::Error::KeyNeeded))?;
            let change = keyring::change(&repo, &current, &new.secret()?, new.params()).await.map_err(classify)?;
            println!("replaced key slot {} by {}", change.removed.id, change.added.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The repository `copy` and `mirror` write to, opened with its own passphrase.
#[derive(Args)]
pub struct TargetArgs {
    /// The target repository: a path, s3://bucket/prefix or azblob://container/prefix
    /// (reached with the same storage options as the source).
    #[arg(long)]
    pub(crate) to: String,
    /// File holding the target's passphrase (else $XENVAULT_TO_PASSPHRASE).
    #[arg(long)]
    to_passphrase_file: Option<PathBuf>,
}

impl TargetArgs {
    pub(crate) async fn open(&self, backend: &BackendOptions) -> Result<Repository> {
        let secret = passphrase(self.to_passphrase_file.as_deref(), "XENVAULT_TO_PASSPHRASE")?;
        match Repository::open(&self.to, backend, secret.as_ref()).await {
            Err(xenvault_repo::Error::KeyNeeded) => Err(anyhow!(
                "no passphrase for the target {}: set XENVAULT_TO_PASSPHRASE or give --to-passphrase-file",
                self.to
            )
            .context(ExitKind::Usage)),
            opened => opened.map_err(|e| classify(e).context(format!("opening the target {}", self.to))),
        }
    }
}

#[derive(Args)]
pub struct CopyArgs {
    /// Restore point ids (or prefixes); none with --all.
    ids: Vec<String>,
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Copy every restore point the target lacks.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

async fn copy(a: CopyArgs) -> Result<ExitCode> {
    let src = a.repo.open().await?;
    let dst = a.target.open(&a.repo.backend()).await?;
    let ids = if a.all {
        src.restore_points().await.map_err(classify)?.into_iter().map(|m| m.id).collect()
    } else if a.ids.is_empty() {
        return Err(anyhow!("name restore points to copy, or --all"));
    } else {
        a.ids.clone()
    };
    let bars = crate::progress::Bars::new(a.json);
    let r = xenvault_repo::copy::copy(&src, &dst, &ids, bars, &CancellationToken::new()).await.map_err(classify)?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "copied {} restore point(s), {} already there; {} chunks read, {} new chunks ({})",
            r.copied.len(),
            r.skipped.len(),
            r.chunks_read,
            r.chunks_new,
            units::bytes(r.bytes_new)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long)]
    json: bool,
}

async fn stats(a: StatsArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let s = xenvault_repo::stats::stats(&repo.restore_points().await.map_err(classify)?);
    if a.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<Vec<String>> = s
        .sources
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.id.clone(),
                v.restore_points.to_string(),
                units::bytes(v.logical_bytes),
                units::bytes(v.stored_bytes),
            ]
        })
        .collect();
    rows.push(vec![
        "total".into(),
        String::new(),
        s.restore_points.to_string(),
        units::bytes(s.logical_bytes),
        units::bytes(s.stored_bytes),
    ]);
    crate::output::table(&["VM", "ID", "RESTORE POINTS", "DISK DATA", "STORED"], &rows, &[2, 3, 4]);
    println!("deduplication and compression: {:.1}x (disk data restorable per byte stored)", s.dedup_ratio);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long)]
    json: bool,
}

async fn unlock(a: UnlockArgs) -> Result<ExitCode> {
    let report = xenvault_repo::lock::unlock(&a.repo.open().await?).await.map_err(classify)?;
    if a.json {
        return print_json(&report).map(|_| ExitCode::SUCCESS);
    }
    println!("removed {} stale lock(s)", report.removed);
    for live in &report.live {
        let r = &live.lock;
        println!(
            "still held: {:?} by {} pid {}, since {}, refreshed {}",
            r.kind,
            r.host,
            r.pid,
            crate::output::time(r.started),
            crate::output::time(r.refreshed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["add", "remove"])))]
pub struct TagArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Restore point id (or a prefix long enough to be sure).
    id: String,
    /// Tag to add (repeatable).
    #[arg(long)]
    add: Vec<String>,
    /// Tag to remove (repeatable).
    #[arg(long)]
    remove: Vec<String>,
    #[arg(long)]
    json: bool,
}

async fn tag(a: TagArgs) -> Result<ExitCode> {
    let repo = a.repo.open().await?;
    let change = xenvault_repo::tags::change_tags(&repo, &a.id, &a.add, &a.remove).await.map_err(select_error)?;
    if a.json {
        return print_json(&change).map(|_| ExitCode::SUCCESS);
    }
    let tags = if change.tags.is_empty() { "(none)".to_owned() } else { change.tags.join(", ") };
    println!("restore point {}: tags {tags}", change.id.get(..8).unwrap_or(&change.id));
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: Commands) -> Result<ExitCode> {
    match cmd {
        Commands::Init(a) => init(a).await,
        Commands::BackupImage(a) => backup_image(a).await,
        Commands::Snapshots(a) => snapshots(a).await,
        Commands::RestoreImage(a) => restore_image(a).await,
        Commands::Verify(a) => verify(a).await,
        Commands::Forget(a) => forget(a).await,
        Commands::Prune(a) => prune(a).await,
        Commands::Key(c) => key(c).await,
        Commands::Copy(a) => copy(a).await,
        Commands::Stats(a) => stats(a).await,
        Commands::Unlock(a) => unlock(a).await,
        Commands::Tag(a) => tag(a).await,
    }
}
