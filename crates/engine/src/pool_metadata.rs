//! Pool metadata backup: the pool database (`GET /pool/xmldbdump`) stored as a restore
//! point of its own kind (source = the pool by uuid, kind [`SOURCE_KIND`], one "disk"
//! holding the dump), so it is chunked, deduplicated, encrypted, listed and kept by
//! retention like any other; and its restore through `PUT /pool/xmldbdump`, always
//! checked by the host's dry run first, applied only when asked.

use crate::error::Error;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xenvault_pool::{Host, Value};
use xenvault_repo::{DiskReader, Manifest, Repository, SourceInfo};
use xenvault_types::progress::{Key, Phase, Progress, Task};

/// `SourceInfo::kind` of a pool metadata restore point.
pub const SOURCE_KIND: &str = "pool-metadata";
/// The name of the one disk that holds the dump.
pub const DUMP_NAME: &str = "xmldbdump.xml";
/// Key of [`PoolMetadataInfo`] in the restore point's metadata.
const METADATA_KEY: &str = "pool_metadata";
/// A pool database is megabytes; this bounds what a broken host could make us buffer.
const MAX_DUMP: usize = 1 << 30;
/// How long a restored xapi may take to restart (its fuse is 30 s) before we give up waiting.
const RESTART_WAIT: Duration = Duration::from_secs(600);

/// What a pool metadata restore point says about its dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolMetadataInfo {
    pub pool_name: String,
    pub pool_uuid: String,
    /// The master's name.
    pub master: String,
    /// The master's xapi version (`software_version.xapi`).
    pub xapi_version: String,
    pub dumped_at: DateTime<Utc>,
    pub bytes: u64,
    /// Of the dump as downloaded: checked again before it goes back to a host.
    pub sha256: String,
}

impl PoolMetadataInfo {
    /// The info of a pool metadata restore point; `None` for any other kind.
    pub fn of(point: &Manifest) -> Option<Self> {
        if point.source.kind != SOURCE_KIND {
            return None;
        }
        serde_json::from_value(point.metadata.get(METADATA_KEY)?.clone()).ok()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MetadataBackupReport {
    pub restore_point: String,
    pub info: PoolMetadataInfo,
    /// Bytes the dump took in the repository once compressed and encrypted (new chunks only).
    pub bytes_stored: u64,
    pub seconds: f64,
}

/// Downloads the pool database and commits it as a restore point. Progress is keyed by
/// the pool uuid, phase `Backup`; nothing is committed when cancelled or when the dump is
/// not a complete database.
pub async fn backup(
    host: &Host,
    repo: &Repository,
    tags: Vec<String>,
    cancel: &CancellationToken,
    progress: Arc<dyn Progress>,
) -> Result<MetadataBackupReport, Error> {
    let started = Instant::now();
    let summary = host.describe().await?;
    let xapi_version = master_xapi_version(host).await?;
    let task = Task::start(progress, Key::disk(&summary.pool_uuid, 0, Phase::Backup), "pool database", 0);
    let dumped_at = Utc::now();
    let dump = cancellable(cancel, download(host, &task)).await??;
    check_complete(&dump)?;
    let info = PoolMetadataInfo {
        pool_name: summary.pool_name.clone(),
        pool_uuid: summary.pool_uuid.clone(),
        master: summary.master,
        xapi_version,
        dumped_at,
        bytes: dump.len() as u64,
        sha256: hex::encode(Sha256::digest(&dump)),
    };
    let source = SourceInfo { id: info.pool_uuid.clone(), kind: SOURCE_KIND.into(), name: info.pool_name.clone() };
    let session = repo.start_backup(source).await?;
    let stored = async {
        let mut writer = session.disk_writer(0, DUMP_NAME, "", info.bytes, None).await?;
        writer.write(0, &dump).await?;
        writer.finish().await
    };
    let disk = match cancellable(cancel, stored).await {
        Ok(Ok(disk)) => disk,
        outcome => {
            if let Err(e) = session.abort().await {
                tracing::warn!("abandoning the unfinished metadata restore point: {e}");
            }
            return Err(outcome.and_then(|r| r.map(drop).map_err(Error::from)).err().unwrap_or(Error::Cancelled));
        }
    };
    let metadata = serde_json::json!({ METADATA_KEY: info });
    let point = session.commit(metadata, tags).await?;
    Ok(MetadataBackupReport {
        restore_point: point.id,
        info,
        bytes_stored: disk.stats.bytes_stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn cancellable<T>(cancel: &CancellationToken, work: impl Future<Output = T>) -> Result<T, Error> {
    tokio::select! {
        () = cancel.cancelled() => Err(Error::Cancelled),
        done = work => Ok(done),
    }
}

async fn master_xapi_version(host: &Host) -> Result<String, Error> {
    let pool = first_ref(host.call("pool.get_all", vec![]).await?)?;
    let master = host.call("pool.get_master", vec![Value::from(pool)]).await?;
    let versions = host.call("host.get_software_version", vec![master]).await?;
    Ok(versions.get("xapi").and_then(Value::as_str).unwrap_or_default().to_owned())
}

fn first_ref(refs: Value) -> Result<String, Error> {
    refs.as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Protocol("the pool has no pool object".into()))
}

async fn download(host: &Host, task: &Task) -> Result<Vec<u8>, Error> {
    let mut body = host.client().pool_xmldbdump().await?;
    let mut dump = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece
            .map_err(|e| Error::Cut(format!("the pool database download broke off after {} bytes: {e}", dump.len())))?;
        if dump.len() + piece.len() > MAX_DUMP {
            return Err(Error::Protocol(format!("the pool database dump is larger than {MAX_DUMP} bytes")));
        }
        task.advance(piece.len() as u64);
        dump.extend_from_slice(&piece);
    }
    Ok(dump)
}

/// A dump must be a whole `<database>` document: a cut or foreign body is refused
/// before it is stored or sent back to a host.
pub fn check_complete(dump: &[u8]) -> Result<(), Error> {
    let text = String::from_utf8_lossy(dump.get(..dump.len().min(4096)).unwrap_or_default());
    let start = text.trim_start().trim_start_matches('\u{feff}');
    let starts = start.starts_with("<database") || (start.starts_with("<?xml") && start.contains("<database"));
    let ends = dump.trim_ascii_end().ends_with(b"</database>");
    match (starts, ends) {
        (true, true) => Ok(()),
        (false, _) => Err(Error::Protocol(format!(
            "not a pool database dump ({} bytes that do not begin with <database>)",
            dump.len()
        ))),
        (true, false) => Err(Error::Cut(format!(
            "the pool database dump ends after {} bytes without </database> (truncated)",
            dump.len()
        ))),
    }
}

/// Whether the restore was only checked or applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreOutcome {
    /// The host's dry run accepted the dump; nothing changed.
    Checked,
    /// The host accepted the dump and restarts on it (sessions end).
    Applied,
    /// Applied, and the host was seen ending our session for its restart.
    Restarted,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetadataRestoreReport {
    pub restore_point: String,
    /// The dump's pool, as backed up.
    pub backup: PoolMetadataInfo,
    /// The pool restored onto: its name and uuid now.
    pub target_pool_name: String,
    pub target_pool_uuid: String,
    /// False when the dump comes from another pool (a new master after a disaster).
    pub same_pool: bool,
    pub outcome: RestoreOutcome,
    pub seconds: f64,
}

/// Restores a pool metadata restore point onto the pool `host` is logged in to: reads
/// the dump back (its checksum must match), has the host dry-run it, and only when
/// `apply` sends it for real. With `wait`, returns once the host has ended our session
/// to restart on the restored database (xapi waits 30 s first).
pub async fn restore(
    host: &Host,
    repo: &Repository,
    point: &Manifest,
    apply: bool,
    wait: bool,
    cancel: &CancellationToken,
    progress: Arc<dyn Progress>,
) -> Result<MetadataRestoreReport, Error> {
    let started = Instant::now();
    let backup = PoolMetadataInfo::of(point).ok_or_else(|| {
        Error::Config(format!(
            "restore point {} is a {} restore point of {:?}, not pool metadata",
            point.short_id(),
            point.source.kind,
            point.source.name
        ))
    })?;
    let task = Task::start(progress, Key::disk(&backup.pool_uuid, 0, Phase::Restore), "pool database", backup.bytes);
    let dump = cancellable(cancel, read_dump(repo, point, &backup)).await??;
    task.advance(dump.len() as u64);
    let target = host.describe().await?;
    let dump = Bytes::from(dump);
    cancellable(cancel, send(host, dump.clone(), true)).await??;
    let mut outcome = RestoreOutcome::Checked;
    if apply {
        cancellable(cancel, send(host, dump, false)).await??;
        outcome = RestoreOutcome::Applied;
        if wait {
            cancellable(cancel, wait_for_restart(host)).await??;
            outcome = RestoreOutcome::Restarted;
        }
    }
    Ok(MetadataRestoreReport {
        restore_point: point.id.clone(),
        same_pool: backup.pool_uuid == target.pool_uuid,
        backup,
        target_pool_name: target.pool_name,
        target_pool_uuid: target.pool_uuid,
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn read_dump(repo: &Repository, point: &Manifest, info: &PoolMetadataInfo) -> Result<Vec<u8>, Error> {
    let disk = point.disk(Some(DUMP_NAME))?;
    let reader = DiskReader::new(repo, disk).await?;
    let len = usize::try_from(reader.size())
        .ok()
        .filter(|&n| n <= MAX_DUMP)
        .ok_or_else(|| Error::Protocol(format!("restore point {} holds a dump too large to send", point.short_id())))?;
    let mut dump = vec![0; len];
    reader.read_at(0, &mut dump).await?;
    let sum = hex::encode(Sha256::digest(&dump));
    if sum != info.sha256 {
        return Err(Error::Protocol(format!(
            "the dump read back from restore point {} has sha256 {sum}, not {} as backed up",
            point.short_id(),
            info.sha256
        )));
    }
    check_complete(&dump)?;
    Ok(dump)
}

async fn send(host: &Host, dump: Bytes, dry_run: bool) -> Result<(), Error> {
    let len = dump.len() as u64;
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(dump) });
    host.client().pool_restore_database(body, len, dry_run).await.map_err(Error::from)
}

/// Polls until the host has ended our session (the client then logs in again by itself,
/// so a new session is the sign): the restart on the restored database has happened.
/// Calls failing meanwhile are a real xapi being down while it restarts.
async fn wait_for_restart(host: &Host) -> Result<(), Error> {
    let before = host.client().session();
    let deadline = Instant::now() + RESTART_WAIT;
    while Instant::now() < deadline {
        if let Err(e) = host.call("pool.get_all", vec![]).await {
            tracing::debug!("waiting for the restart on the restored database: {e}");
        }
        if host.client().session() != before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(Error::Protocol(format!(
        "the host accepted the database but did not restart within {} s",
        RESTART_WAIT.as_secs()
    )))
}

/// The pool metadata restore points, oldest first; `pool` (a name or uuid) narrows them.
pub async fn list(repo: &Repository, pool: Option<&str>) -> Result<Vec<(Manifest, PoolMetadataInfo)>, Error> {
    let filter = xenvault_repo::select::Filter { source: pool.map(str::to_owned), ..Default::default() };
    Ok(filter
        .apply(repo.restore_points().await?)
        .into_iter()
        .filter_map(|m| PoolMetadataInfo::of(&m).map(|info| (m, info)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_database_documents_pass() {
        assert!(check_complete(b"<?xml version=\"1.0\"?><database><manifest/></database>\n").is_ok());
        let cut = check_complete(b"<database><table name=\"VM\">").unwrap_err().to_string();
        assert!(cut.contains("truncated"), "{cut}");
        let foreign = check_complete(b"HTTP/1.1 500 Internal Error").unwrap_err().to_string();
        assert!(foreign.contains("not a pool database dump"), "{foreign}");
    }
}
