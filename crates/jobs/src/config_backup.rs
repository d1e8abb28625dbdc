//! xenvault's own configuration backup in a repository, and the `config-backup` job kind.
//!
//! What is backed up (the server's config, its catalog and keys) is the caller's bytes;
//! here they are compressed and sealed under a passphrase of their own, not the
//! repository's key: a key slot as the repository keeps its own (Argon2id wrapping a random
//! key), that key sealing the content with AES-256-GCM. The sealed blob is stored as a
//! restore point of its own kind ([`SOURCE_KIND`], one "disk" holding the blob), so it is
//! listed, mirrored and kept by retention like the others.
//!
//! Blob: `MAGIC`, one line of JSON header (format, key slot), then
//! `nonce ‖ AES-256-GCM(zstd(content)) ‖ tag` with everything before it as associated data.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use xenvault_repo::crypto::{Aead, MasterKey};
use xenvault_repo::keys::KeySlot;
use xenvault_repo::{DiskReader, KdfParams, Manifest, Repository, Secret, SourceInfo};

use crate::model::{Job, Run, RunStatus, RunTotals, Schedule, Task, TaskKind, TaskStatus};
use crate::runner::{Frame, Outcome, Recorder, RunSink, new_id, retention_step};

/// `SourceInfo::kind` of a configuration backup.
pub const SOURCE_KIND: &str = "xenvault-config";
/// The name of the one disk that holds the sealed blob.
pub const BLOB_NAME: &str = "xenvault-config.sealed";
/// Key of [`ConfigBackupInfo`] in the restore point's metadata.
const METADATA_KEY: &str = "config_backup";
const MAGIC: &[u8] = b"xenvault configuration backup\n";
const FORMAT: u32 = 1;
/// A catalog with years of history is tens of megabytes; this bounds what a damaged
/// restore point could make us allocate.
const MAX_BLOB: u64 = 4 << 30;
const ZSTD_LEVEL: i32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum ConfigBackupError {
    #[error("the configuration backup passphrase is wrong (it is not the repository's passphrase)")]
    WrongPassphrase,
    #[error("the configuration backup is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the operation was cancelled")]
    Cancelled,
    #[error(transparent)]
    Repository(#[from] xenvault_repo::Error),
}

/// What a configuration backup restore point says about itself (readable without the
/// passphrase: counts, no names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigBackupInfo {
    /// The host name of the server that made it.
    pub server: String,
    pub created_at: DateTime<Utc>,
    /// Bytes of the sealed blob.
    pub bytes: u64,
    /// How many of each thing it holds (jobs, runs, restore points, ...).
    pub contents: BTreeMap<String, u64>,
}

impl ConfigBackupInfo {
    /// The info of a configuration backup restore point; `None` for any other kind.
    pub fn of(point: &Manifest) -> Option<Self> {
        if point.source.kind != SOURCE_KIND {
            return None;
        }
        serde_json::from_value(point.metadata.get(METADATA_KEY)?.clone()).ok()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    slot: KeySlot,
}

/// Compresses `content` and seals it under `passphrase` (Argon2id cost `kdf`).
pub fn seal(passphrase: &str, kdf: KdfParams, content: &[u8]) -> Result<Vec<u8>, ConfigBackupError> {
    if passphrase.is_empty() {
        return Err(ConfigBackupError::Invalid("the configuration backup passphrase is empty".into()));
    }
    let key = MasterKey::generate()?;
    let slot = KeySlot::create(&key, &Secret::passphrase(passphrase), kdf, "configuration backup")?;
    let header = serde_json::to_vec(&Header { format: FORMAT, slot })
        .map_err(|e| ConfigBackupError::Invalid(format!("configuration backup header: {e}")))?;
    let compressed = zstd::bulk::compress(content, ZSTD_LEVEL)
        .map_err(|e| ConfigBackupError::Invalid(format!("compressing the configuration: {e}")))?;
    let mut blob = [MAGIC, &header, b"\n"].concat();
    let sealed = Aead::new(&key.encryption).seal(&blob, &compressed)?;
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// The content `blob` seals, if `passphrase` is the one it was sealed with.
pub fn open(passphrase: &str, blob: &[u8]) -> Result<Vec<u8>, ConfigBackupError> {
    let damaged = |why: &str| ConfigBackupError::Damaged(why.to_owned());
    let rest = blob.strip_prefix(MAGIC).ok_or_else(|| damaged("it does not begin as one"))?;
    let header_len = rest.iter().position(|&b| b == b'\n').ok_or_else(|| damaged("its header has no end"))?;
    let header: Header = serde_json::from_slice(&rest[..header_len]).map_err(|e| damaged(&format!("header: {e}")))?;
    if header.format != FORMAT {
        return Err(ConfigBackupError::Invalid(format!(
            "configuration backup format {} is not one this xenvault reads ({FORMAT}): upgrade xenvault",
            header.format
        )));
    }
    let key = header
        .slot
        .open(&Secret::passphrase(passphrase))
        .map_err(|e| damaged(&e.to_string()))?
        .ok_or(ConfigBackupError::WrongPassphrase)?;
    let (aad, sealed) = blob.split_at(MAGIC.len() + header_len + 1);
    let compressed = Aead::new(&key.encryption)
        .open(aad, sealed)
        .ok_or_else(|| damaged("its content does not authenticate (changed or cut)"))?;
    let mut decoder = zstd::stream::read::Decoder::new(compressed.as_slice()).map_err(|e| damaged(&e.to_string()))?;
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut decoder, &mut content).map_err(|e| damaged(&format!("decompressing: {e}")))?;
    Ok(content)
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredConfigBackup {
    pub restore_point: String,
    pub info: ConfigBackupInfo,
    /// Bytes it took in the repository (new chunks only).
    pub bytes_stored: u64,
}

/// Commits `blob` (from [`seal`]) as a configuration backup restore point of `server`.
pub async fn store(
    repo: &Repository,
    server: &str,
    blob: &[u8],
    contents: BTreeMap<String, u64>,
    tags: Vec<String>,
    cancel: &CancellationToken,
) -> Result<StoredConfigBackup, ConfigBackupError> {
    let info =
        ConfigBackupInfo { server: server.to_owned(), created_at: Utc::now(), bytes: blob.len() as u64, contents };
    let source = SourceInfo { id: server.to_owned(), kind: SOURCE_KIND.into(), name: server.to_owned() };
    let session = repo.start_backup(source).await?;
    let written = async {
        let mut writer = session.disk_writer(0, BLOB_NAME, "", info.bytes, None).await?;
        writer.write(0, blob).await?;
        writer.finish().await
    };
    let disk = tokio::select! {
        () = cancel.cancelled() => Err(ConfigBackupError::Cancelled),
        written = written => written.map_err(ConfigBackupError::from),
    };
    let disk = match disk {
        Ok(disk) => disk,
        Err(e) => {
            if let Err(abort) = session.abort().await {
                tracing::warn!("abandoning the unfinished configuration backup: {abort}");
            }
            return Err(e);
        }
    };
    let point = session.commit(serde_json::json!({ METADATA_KEY: &info }), tags).await?;
    Ok(StoredConfigBackup { restore_point: point.id, info, bytes_stored: disk.stats.bytes_stored })
}

/// The sealed blob of configuration backup `point`.
pub async fn read(repo: &Repository, point: &Manifest) -> Result<Vec<u8>, ConfigBackupError> {
    if ConfigBackupInfo::of(point).is_none() {
        return Err(ConfigBackupError::Invalid(format!(
            "restore point {} is a {} restore point of {:?}, not a configuration backup",
            point.short_id(),
            point.source.kind,
            point.source.name
        )));
    }
    let reader = DiskReader::new(repo, point.disk(Some(BLOB_NAME))?).await?;
    let len = usize::try_from(reader.size()).ok().filter(|&n| n as u64 <= MAX_BLOB).ok_or_else(|| {
        ConfigBackupError::Damaged(format!("restore point {} says it holds {} bytes", point.short_id(), reader.size()))
    })?;
    let mut blob = vec![0; len];
    reader.read_at(0, &mut blob).await?;
    Ok(blob)
}

/// The configuration backups of the repository, oldest first.
pub async fn list(repo: &Repository) -> Result<Vec<(Manifest, ConfigBackupInfo)>, ConfigBackupError> {
    let mut points: Vec<_> = repo
        .restore_points()
        .await?
        .into_iter()
        .filter_map(|m| ConfigBackupInfo::of(&m).map(|info| (m, info)))
        .collect();
    points.sort_by(|a, b| a.0.time.cmp(&b.0.time).then_with(|| a.0.id.cmp(&b.0.id)));
    Ok(points)
}

/// What a run backs up, made by the caller (the server) when the run needs it: the sealed
/// blob and its counts, or why there is none.
pub struct Sealed {
    pub server: String,
    pub blob: Vec<u8>,
    pub contents: BTreeMap<String, u64>,
}

/// Runs `run` of a config-backup job: `make` gives the sealed configuration (made once the
/// run is marked running, so the backup shows it running), stored in `repo` tagged with the
/// job and the run; then the schedule's retention over the configuration backups its runs
/// made.
pub async fn run<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    mut run: Run,
    repo: &Repository,
    make: impl Future<Output = Result<Sealed, String>>,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Outcome {
    let mut frame = Frame::start(job, &mut run, &sink, &cancel).await;
    let cancel = frame.cancel.clone();
    let result = back_up(job, &run, repo, make, &cancel, &mut frame.recorder).await;
    frame.settle(&mut run, result);
    if run.status == RunStatus::Success
        && let Some(schedule) = schedule.filter(|s| !s.retention.keeps_everything())
    {
        let runs = sink.runs_of_schedule(&job.id, &schedule.id).await;
        let points = repo.restore_points().await.map(|all| made_by(all, job, &runs)).map_err(Into::into);
        retention_step(schedule, &run, repo, points, &mut frame.recorder).await;
    }
    frame.end(run).await
}

fn tags(job: &Job, run: &Run) -> Vec<String> {
    vec![format!("job:{}", job.id), format!("run:{}", run.id)]
}

/// The run that made a configuration backup, from its tags.
pub fn made_by_run(point: &Manifest) -> Option<&str> {
    point.tags.iter().find_map(|t| t.strip_prefix("run:"))
}

/// The configuration backups of `all` that the runs `runs` of `job` made.
fn made_by(all: Vec<Manifest>, job: &Job, runs: &[String]) -> Vec<Manifest> {
    let job_tag = format!("job:{}", job.id);
    all.into_iter()
        .filter(|m| ConfigBackupInfo::of(m).is_some() && m.tags.contains(&job_tag))
        .filter(|m| made_by_run(m).is_some_and(|run| runs.iter().any(|r| r == run)))
        .collect()
}

async fn back_up<S: RunSink>(
    job: &Job,
    run: &Run,
    repo: &Repository,
    make: impl Future<Output = Result<Sealed, String>>,
    cancel: &CancellationToken,
    recorder: &mut Recorder<S>,
) -> Result<RunTotals, String> {
    job.settings.check()?;
    job.check_kind()?;
    let mut task = Task::started(new_id(), &run.id, Some(&recorder.root_id()), TaskKind::Step, "configuration");
    recorder.save(task.clone()).await;
    let stored = match make.await {
        Ok(sealed) => store(repo, &sealed.server, &sealed.blob, sealed.contents, tags(job, run), cancel).await,
        Err(e) => Err(ConfigBackupError::Invalid(e)),
    };
    task.finished_at = Some(Utc::now());
    let outcome = match stored {
        Ok(stored) => {
            task.status = TaskStatus::Success;
            task.subject = Some(stored.info.server.clone());
            task.bytes_total = Some(stored.info.bytes);
            task.bytes_read = stored.info.bytes;
            task.bytes_stored = stored.bytes_stored;
            let counts: Vec<String> = stored.info.contents.iter().map(|(what, n)| format!("{n} {what}")).collect();
            task.reason = Some(format!(
                "restore point {} holds the configuration of {} ({})",
                stored.restore_point,
                stored.info.server,
                counts.join(", ")
            ));
            Ok(RunTotals { bytes_read: stored.info.bytes, bytes_stored: stored.bytes_stored, ..Default::default() })
        }
        Err(ConfigBackupError::Cancelled) => {
            task.status = TaskStatus::Cancelled;
            Ok(RunTotals::default())
        }
        Err(e) => {
            task.status = TaskStatus::Failed;
            task.errors.push(e.to_string());
            Err(format!("configuration backup: {e}"))
        }
    };
    recorder.save(task).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest Argon2 cost: these tests are about the format, not the cost.
    const CHEAP: KdfParams = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };

    #[test]
    fn only_the_passphrase_opens_an_intact_blob() {
        let content = b"{\"jobs\": []}".repeat(100);
        let blob = seal("config passphrase", CHEAP, &content).unwrap();
        assert_eq!(open("config passphrase", &blob).unwrap(), content);
        assert!(matches!(open("repository passphrase", &blob), Err(ConfigBackupError::WrongPassphrase)));
        let mut flipped = blob.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(matches!(open("config passphrase", &flipped), Err(ConfigBackupError::Damaged(_))));
        let cut = &blob[..blob.len() / 2];
        assert!(matches!(open("config passphrase", cut), Err(ConfigBackupError::Damaged(_))));
        assert!(matches!(open("config passphrase", b"PK\x03\x04"), Err(ConfigBackupError::Damaged(_))));
        assert!(matches!(seal("", CHEAP, &content), Err(ConfigBackupError::Invalid(_))));
    }
}
