//! `copy`: restore points from one repository to another. Chunks are decrypted from the
//! source and sealed under the target's key; when both repositories derive chunk ids
//! with the same key (`init --chunk-ids-from`) and use the same chunk size, chunks the
//! target already has are not even read.

use crate::error::Result;
use crate::reader::DiskReader;
use crate::repository::Repository;
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_types::progress::{Key, Phase, Progress, Task};

/// Chunks fetched from the source at once.
const PREFETCH: usize = 8;

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub copied: Vec<String>,
    /// Already in the target.
    pub skipped: Vec<String>,
    /// Chunks read from the source (the rest were known to the target by id).
    pub chunks_read: u64,
    /// Data chunks the target lacked and stored, their bytes before and after sealing.
    pub chunks_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
}

/// Copies the restore points `ids` (ids or unique prefixes) from `src` to `dst`, one task
/// per disk. A cancelled copy commits nothing more (restore points copied before stay).
pub async fn copy(
    src: &Repository,
    dst: &Repository,
    ids: &[String],
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let present: std::collections::HashSet<String> = dst.restore_points().await?.into_iter().map(|m| m.id).collect();
    for wanted in ids {
        let m = src.restore_point(wanted).await?;
        if present.contains(&m.id) {
            report.skipped.push(m.id);
            continue;
        }
        copy_point(src, dst, &m, &progress, cancel, &mut report).await?;
        report.copied.push(m.id);
    }
    Ok(report)
}

/// Copies the restore point `m` of `src` into `dst`, which lacks it. Cancelled, it stores
/// the chunks it already packed before giving up, so a rerun does not send them again.
pub(crate) async fn copy_point(
    src: &Repository,
    dst: &Repository,
    m: &crate::Manifest,
    progress: &Arc<dyn Progress>,
    cancel: &CancellationToken,
    report: &mut CopyReport,
) -> Result<()> {
    let session = dst.start_backup(m.source.clone()).await?;
    match copy_disks(src, dst, m, &session, progress, cancel, report).await {
        Ok(()) => session.commit_copy(m).await.map(drop),
        Err(e) => {
            let ended = match e {
                crate::Error::Cancelled => session.abort_keeping_chunks().await,
                _ => session.abort().await,
            };
            if let Err(end) = ended {
                tracing::warn!(error = %end, "could not end the copy's session");
            }
            Err(e)
        }
    }
}

async fn copy_disks(
    src: &Repository,
    dst: &Repository,
    m: &crate::Manifest,
    session: &crate::BackupSession,
    progress: &Arc<dyn Progress>,
    cancel: &CancellationToken,
    report: &mut CopyReport,
) -> Result<()> {
    for disk in &m.disks {
        let key = Key::disk(&m.source.id, disk.position, Phase::Copy);
        let task =
            Task::start(progress.clone(), key, format!("{} disk {} (copy)", m.source.name, disk.position), disk.size);
        let reader = DiskReader::new(src, disk).await?;
        let mut w = session.disk_writer(disk.position, &disk.name, &disk.uuid, disk.size, None).await?;
        let by_id = dst.shares_chunk_ids_with(src) && disk.chunk_size as u64 == w.chunk_size();
        let cs = w.chunk_size();
        let slots = disk.size.div_ceil(cs);
        let mut pieces = futures::stream::iter(0..slots)
            .map(|slot| {
                let reader = &reader;
                async move {
                    let offset = slot * cs;
                    if by_id {
                        let id = reader.chunk_id(slot).await?;
                        if id.is_zero() || dst.has_usable_chunk(&id) {
                            return Ok::<_, crate::Error>((offset, Some(id), None));
                        }
                    }
                    let mut buf = vec![0u8; (disk.size - offset).min(cs) as usize];
                    reader.read_at(offset, &mut buf).await?;
                    Ok((offset, None, Some(buf)))
                }
            })
            .buffered(PREFETCH);
        while let Some(piece) = pieces.next().await {
            if cancel.is_cancelled() {
                w.drain().await?;
                return Err(crate::Error::Cancelled);
            }
            let piece = piece?;
            task.advance((disk.size - piece.0).min(cs));
            match piece {
                (_, Some(id), _) if id.is_zero() => {}
                (offset, Some(id), _) => w.write_known(offset, id).await?,
                (offset, None, Some(buf)) => {
                    report.chunks_read += 1;
                    w.write(offset, &buf).await?;
                }
                _ => {}
            }
        }
        let rec = w.finish().await?;
        report.chunks_new += rec.stats.chunks_new;
        report.bytes_new += rec.stats.bytes_new;
        report.bytes_stored += rec.stats.bytes_stored;
    }
    Ok(())
}
