//! Disk image files (raw or VHD) stored as one restore point: what `backup-image` does.
//! It lives here, not in the engine, because it needs nothing but the repository's writer
//! and its image sources; the engine is about reading VMs over XenAPI.

use crate::error::{Error, Result};
use crate::manifest::{Manifest, SourceInfo};
use crate::repository::Repository;
use crate::source::{ImageFormat, open_image};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use xenvault_types::progress::{Key, Phase, Progress, Task};

#[derive(Debug, Clone)]
pub struct ImageBackupOptions {
    /// The files; each becomes the disk at its place in the list.
    pub files: Vec<PathBuf>,
    pub format: ImageFormat,
    /// Groups restore points for retention (default: the first file's absolute path).
    pub source_id: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageBackupReport {
    /// The committed restore point (its disks carry the write statistics).
    pub snapshot: Manifest,
    pub seconds: f64,
    pub bytes_per_second: f64,
}

/// Checks every file before locking the repository, then stores them as one restore
/// point. Progress is keyed by the source id and the disk's position, phase `Import`.
pub async fn backup_images(
    repo: &Repository,
    options: &ImageBackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<ImageBackupReport> {
    let first = options.files.first().ok_or_else(|| Error::Invalid("no image file given".into()))?;
    let sources = options.files.iter().map(|path| open_image(path, options.format)).collect::<Result<Vec<_>>>()?;
    let absolute =
        |path: &PathBuf| std::path::absolute(path).map_err(|source| Error::Io { path: path.clone(), source });
    let first = absolute(first)?;
    let source_id = options.source_id.clone().unwrap_or_else(|| first.display().to_string());
    let name = first.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let session = repo.start_backup(SourceInfo { id: source_id.clone(), kind: "image".into(), name }).await?;
    let started = std::time::Instant::now();
    let mut files = Vec::new();
    for (i, (path, source)) in options.files.iter().zip(sources).enumerate() {
        let disk_name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("disk{i}"));
        let position = u32::try_from(i).map_err(|_| Error::Invalid("too many image files".into()))?;
        let key = Key::disk(&source_id, position, Phase::Import);
        let task = Task::start(progress.clone(), key, path.display().to_string(), source.size());
        let mut writer = session.disk_writer(position, &disk_name, "", source.size(), None).await?;
        writer.set_progress(task);
        writer.write_source(source).await?;
        writer.finish().await?;
        files.push(absolute(path)?.display().to_string());
    }
    let snapshot = session.commit(serde_json::json!({ "files": files }), options.tags.clone()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes_per_second = snapshot.total_size() as f64 / seconds.max(1e-9);
    Ok(ImageBackupReport { snapshot, seconds, bytes_per_second })
}
