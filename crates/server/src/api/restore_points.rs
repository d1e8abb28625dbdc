//! Restore points of a registered repository: listed with filters, one in detail, and
//! browsed down to files: disk → volumes (partitions, LVs) → directories, a file
//! downloaded, or a directory streamed as tar or zip. Reading goes through the
//! repository's authenticated reads; paths stay inside the file system and symlinks are
//! shown and archived as links, never followed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_fsread::{Entry, EntryKind, FileSystem};
use xenvault_repo::select::{Filter, SelectError};
use xenvault_repo::{DiskReader, Manifest, Repository};
use xenvault_restore::RepoDisk;
use xenvault_restore::files::StoredFs;
use xenvault_types::metadata::{BackupRun, VmMetadata};

use crate::AppState;
use crate::api::connections::{open_repository, stored_repository};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Params;

/// Bytes a download buffers before handing them to the connection; a few such pieces
/// are in flight at most, whatever the file's size.
const STREAM_PIECE: usize = 64 << 10;
const PIECES_IN_FLIGHT: usize = 4;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_restore_points))
        .routes(routes!(get_restore_point))
        .routes(routes!(list_volumes))
        .routes(routes!(list_entries))
        .routes(routes!(download_file))
        .routes(routes!(download_archive))
}

/// Repositories opened once (opening derives the key from the passphrase, which is slow
/// on purpose), reopened when their registration changes.
#[derive(Default)]
pub struct OpenRepositories(Mutex<HashMap<String, (DateTime<Utc>, Repository)>>);

/// The registered repository `name`, opened, with the pack indexes written since it was
/// last used.
pub async fn repository(state: &AppState, name: &str) -> ApiResult<Repository> {
    let (stored, passphrase) = stored_repository(state, name).await?;
    let mut open = state.repositories.0.lock().await;
    let repo = match open.get(name) {
        Some((updated_at, repo)) if *updated_at == stored.updated_at => repo.clone(),
        _ => {
            let repo = open_repository(state, &stored.settings, &passphrase).await?;
            open.insert(name.to_owned(), (stored.updated_at, repo.clone()));
            repo
        }
    };
    drop(open);
    repo.refresh_index().await.map_err(|e| ApiError::internal(format!("reading repository {name}: {e}")))?;
    Ok(repo)
}

/// The restore point `id` (a whole id or an unambiguous prefix) of the repository.
pub async fn restore_point(repo: &Repository, id: &str) -> ApiResult<Manifest> {
    xenvault_repo::select::restore_point(repo, id, None).await.map_err(|e| match e {
        SelectError::NotFound { .. } => ApiError::not_found(e.to_string()),
        SelectError::TooShort { .. } | SelectError::Ambiguous { .. } => ApiError::invalid(e.to_string()),
        SelectError::Repo(e) => ApiError::internal(format!("listing restore points: {e}")),
    })
}

/// A restore library error as an answer: what the caller named wrong is theirs (4xx),
/// the rest is the server's.
pub fn restore_error(e: xenvault_restore::Error) -> ApiError {
    use xenvault_fsread::Error as Fs;
    use xenvault_restore::Error as E;
    match e {
        E::Fs(Fs::NotFound(_)) | E::NoSuchVolume { .. } | E::Repo(xenvault_repo::Error::DiskNotFound(_)) => {
            ApiError::not_found(e.to_string())
        }
        E::Fs(Fs::NotADirectory(_)) => ApiError::new(StatusCode::BAD_REQUEST, "not_a_directory", e.to_string()),
        E::Fs(Fs::NotAFile(_)) => ApiError::new(StatusCode::BAD_REQUEST, "not_a_file", e.to_string()),
        E::NoFileSystem(_) | E::Fs(Fs::UnknownFileSystem | Fs::Unsupported(_)) | E::Unsupported(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "unsupported", e.to_string())
        }
        E::Target(_) => ApiError::new(StatusCode::BAD_REQUEST, "restore_target", e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiskView {
    /// The VBD userdevice the disk had (what `disks/{position}` takes).
    pub position: u32,
    pub name: String,
    /// The VDI backed up.
    pub uuid: String,
    pub size: u64,
    /// The VDI's name label (in the detail only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestorePointView {
    pub id: String,
    pub time: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// The VM's uuid (the source's id for other sources).
    pub vm_uuid: String,
    pub vm_name: String,
    /// vm, vm-xva, image, ...
    pub source_kind: String,
    /// full, inc, diff or copy; none for a source that was not a backup run.
    pub level: Option<String>,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub pool: Option<String>,
    pub tags: Vec<String>,
    /// Bytes of the disks.
    pub size: u64,
    pub disks: Vec<DiskView>,
}

impl From<&Manifest> for RestorePointView {
    fn from(m: &Manifest) -> Self {
        let run = BackupRun::of(&m.metadata);
        let level =
            run.as_ref().and_then(|r| serde_json::to_value(r.level).ok()).and_then(|v| v.as_str().map(str::to_owned));
        let (job_id, run_id, pool) = run.map(|r| (r.job_id, r.run_id, r.pool)).unwrap_or_default();
        RestorePointView {
            id: m.id.clone(),
            time: m.time,
            finished: m.finished,
            vm_uuid: m.source.id.clone(),
            vm_name: m.source.name.clone(),
            source_kind: m.source.kind.clone(),
            level,
            job_id,
            run_id,
            pool,
            tags: m.tags.clone(),
            size: m.total_size(),
            disks: m
                .disks
                .iter()
                .map(|d| DiskView {
                    position: d.position,
                    name: d.name.clone(),
                    uuid: d.uuid.clone(),
                    size: d.size,
                    label: None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestorePointPage {
    /// Newest first.
    pub restore_points: Vec<RestorePointView>,
    /// Restore points matching the filters, over all pages.
    pub total: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestorePointFilter {
    /// The VM's uuid or name.
    pub vm: Option<String>,
    /// The backup job's id.
    pub job: Option<String>,
    /// Restore points with this tag.
    pub tag: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// The repository's restore points, newest first.
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points", tag = "restore-points",
    params(("repo" = String, Path), RestorePointFilter),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = RestorePointPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_restore_points(
    State(state): State<AppState>,
    Path(repo): Path<String>,
    Params(filter): Params<RestorePointFilter>,
) -> ApiResult<Json<RestorePointPage>> {
    let repo = repository(&state, &repo).await?;
    let points = repo.restore_points().await.map_err(|e| ApiError::internal(format!("listing restore points: {e}")))?;
    let matching = Filter {
        source: filter.vm,
        job: filter.job,
        tags: filter.tag.into_iter().collect(),
        since: filter.since,
        until: filter.until,
        ..Default::default()
    }
    .apply(points);
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let offset = usize::try_from(filter.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let page = matching.iter().rev().skip(offset).take(limit).map(RestorePointView::from).collect();
    Ok(Json(RestorePointPage { restore_points: page, total: matching.len() as u64 }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestorePointDetail {
    #[serde(flatten)]
    pub point: RestorePointView,
    /// The restore point this one was written against.
    pub base: Option<String>,
    /// The host the VM ran on.
    pub host: Option<String>,
    /// Whether the VM's records are stored (a whole-VM restore needs them).
    pub restorable_as_vm: bool,
}

/// One restore point (a whole id or an unambiguous prefix of at least 4 characters).
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}", tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = RestorePointDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn get_restore_point(
    State(state): State<AppState>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<Json<RestorePointDetail>> {
    let m = restore_point(&repository(&state, &repo).await?, &id).await?;
    let meta = VmMetadata::from_value(&m.metadata).ok().flatten();
    let mut point = RestorePointView::from(&m);
    for disk in &mut point.disks {
        disk.label = meta.as_ref().and_then(|meta| meta.disk(&disk.uuid)).map(|info| info.name_label.clone());
    }
    Ok(Json(RestorePointDetail {
        point,
        base: m.base.clone(),
        host: BackupRun::of(&m.metadata).and_then(|run| run.host),
        restorable_as_vm: meta.is_some(),
    }))
}

/// A stored disk of a restore point, readable by the file system readers, with its restore point.
pub(crate) async fn stored_disk(
    state: &AppState,
    repo: &str,
    id: &str,
    position: &str,
) -> ApiResult<(Manifest, RepoDisk)> {
    if position.is_empty() || !position.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(format!("disk position {position:?}: give the disk's number (0, 1, ...)")));
    }
    let repo = repository(state, repo).await?;
    let m = restore_point(&repo, id).await?;
    let record = m.disk(Some(position)).map_err(|e| ApiError::not_found(e.to_string()))?;
    let reader = DiskReader::new(&repo, record).await.map_err(|e| restore_error(e.into()))?;
    Ok((m, RepoDisk::new(Arc::new(reader), tokio::runtime::Handle::current())))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VolumeView {
    /// What `volumes/{volume}` takes: p1, p5, vgdata/home (URL-encode the slash), disk.
    pub name: String,
    pub description: String,
    pub offset: Option<u64>,
    pub size: u64,
    /// ext4, xfs, ntfs, fat, lvm-pv, swap, unknown, or "unreadable: why".
    pub content: String,
    /// Whether its files can be browsed.
    pub browsable: bool,
}

/// The volumes of a stored disk: partitions, LVM logical volumes, or the whole disk.
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}/disks/{position}/volumes", tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path), ("position" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [VolumeView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_volumes(
    State(state): State<AppState>,
    Path((repo, id, position)): Path<(String, String, String)>,
) -> ApiResult<Json<Vec<VolumeView>>> {
    let (_, disk) = stored_disk(&state, &repo, &id, &position).await?;
    let volumes = xenvault_restore::files::volumes(disk).await.map_err(restore_error)?;
    let browsable = ["ext2", "ext3", "ext4", "xfs", "ntfs", "fat"];
    Ok(Json(
        volumes
            .into_iter()
            .map(|v| VolumeView {
                browsable: browsable.iter().any(|fs| v.content.starts_with(fs)),
                name: v.name,
                description: v.description,
                offset: v.offset,
                size: v.size,
                content: v.content,
            })
            .collect(),
    ))
}

/// A path inside a file system, absolute and without `..`: nothing named by the caller
/// may leave the file system's root.
pub fn inside_path(path: Option<&str>) -> ApiResult<String> {
    let path = path.unwrap_or("/");
    let bad = |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", format!("path {path:?}: {why}"));
    if path.contains('\0') {
        return Err(bad("contains a NUL character"));
    }
    if path.split(['/', '\\']).any(|c| c == "..") {
        return Err(bad("'..' is not allowed: give the path from the file system's root"));
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    Ok(format!("/{}", parts.join("/")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathParam {
    /// Inside the file system, from its root (default /); `..` is refused.
    pub path: Option<String>,
}

async fn open_fs(state: &AppState, repo: &str, id: &str, position: &str, volume: &str) -> ApiResult<StoredFs> {
    let (_, disk) = stored_disk(state, repo, id, position).await?;
    StoredFs::open(disk, Some(volume.to_owned())).await.map_err(restore_error)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKindView {
    File,
    Dir,
    Symlink,
    /// Devices, FIFOs, sockets: listed, never downloaded.
    Other,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    pub name: String,
    pub path: String,
    pub kind: EntryKindView,
    pub size: u64,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Option<DateTime<Utc>>,
    /// Where a symlink points (it is never followed).
    pub symlink_target: Option<String>,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        let kind = match e.kind {
            EntryKind::File => EntryKindView::File,
            EntryKind::Dir => EntryKindView::Dir,
            EntryKind::Symlink => EntryKindView::Symlink,
            EntryKind::Other => EntryKindView::Other,
        };
        EntryView {
            mtime: Utc.timestamp_opt(e.mtime, e.mtime_nsec).single(),
            name: e.name,
            path: e.path,
            kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            symlink_target: e.symlink_target,
        }
    }
}

/// The entries of a directory, sorted by name (the entry itself when it is not one).
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}/disks/{position}/volumes/{volume}/entries",
    tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path), ("position" = String, Path), ("volume" = String, Path), PathParam),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [EntryView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_entries(
    State(state): State<AppState>,
    Path((repo, id, position, volume)): Path<(String, String, String, String)>,
    Params(query): Params<PathParam>,
) -> ApiResult<Json<Vec<EntryView>>> {
    let path = inside_path(query.path.as_deref())?;
    let fs = open_fs(&state, &repo, &id, &position, &volume).await?;
    let entries = fs.list(&path).await.map_err(restore_error)?;
    Ok(Json(entries.into_iter().map(EntryView::from).collect()))
}

/// Writes what it is given to a download's body in pieces; fails (ending the work) once
/// the client has gone.
pub(crate) struct BodyWriter {
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    piece: Vec<u8>,
}

impl BodyWriter {
    fn new() -> (BodyWriter, Body) {
        let (sender, receiver) = mpsc::channel(PIECES_IN_FLIGHT);
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|piece| (piece, receiver))
        });
        (BodyWriter { sender, piece: Vec::with_capacity(STREAM_PIECE) }, Body::from_stream(stream))
    }

    fn send(&mut self, item: Result<Bytes, std::io::Error>) -> std::io::Result<()> {
        self.sender
            .blocking_send(item)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client closed the download"))
    }

    /// Ends the body with an error, so the client sees a failed download, not a short one.
    fn fail(mut self, error: String) {
        tracing::warn!("download stopped: {error}");
        let _ = self.send(Err(std::io::Error::other(error)));
    }
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = STREAM_PIECE - self.piece.len();
        let n = buf.len().min(room);
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == STREAM_PIECE {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.piece, Vec::with_capacity(STREAM_PIECE)));
        self.send(Ok(piece))
    }
}

/// `attachment` with the name as ASCII (others replaced) and as UTF-8 (RFC 6266 / 5987).
fn attachment(name: &str) -> HeaderValue {
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Runs `write` on a blocking thread, streaming what it writes as the answer's body.
pub(crate) fn streamed(
    content_type: &'static str,
    file_name: &str,
    length: Option<u64>,
    write: impl FnOnce(&mut BodyWriter) -> Result<(), String> + Send + 'static,
) -> Response {
    let (mut writer, body) = BodyWriter::new();
    tokio::task::spawn_blocking(move || {
        match write(&mut writer).and_then(|()| writer.flush().map_err(|e| e.to_string())) {
            Ok(()) => {}
            Err(e) => writer.fail(e),
        }
    });
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, attachment(file_name)),
        ],
        body,
    )
        .into_response();
    if let Some(length) = length {
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// Downloads one regular file.
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}/disks/{position}/volumes/{volume}/files",
    tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path), ("position" = String, Path), ("volume" = String, Path), PathParam),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_file(
    State(state): State<AppState>,
    who: Principal,
    Path((repo, id, position, volume)): Path<(String, String, String, String)>,
    Params(query): Params<PathParam>,
) -> ApiResult<Response> {
    let path = inside_path(query.path.as_deref())?;
    let fs = open_fs(&state, &repo, &id, &position, &volume).await?;
    let entry = fs.stat(&path).await.map_err(restore_error)?;
    if entry.kind != EntryKind::File {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not_a_file", format!("{path} is not a regular file")));
    }
    let target = format!("{repo}/{id}/{position}/{volume}:{path}");
    state.catalog.audit(&who.actor, "restore-point.download", Some(&target), None).await?;
    let fs = fs.file_system();
    Ok(streamed("application/octet-stream", &entry.name, Some(entry.size), move |out| {
        let mut file = fs.open(&entry.path).map_err(|e| e.to_string())?;
        std::io::copy(&mut file, out).map(drop).map_err(|e| e.to_string())
    }))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    #[default]
    Tar,
    Zip,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArchiveParams {
    /// The directory, from the file system's root (default /); `..` is refused.
    pub path: Option<String>,
    /// tar (default) or zip.
    #[param(inline)]
    pub format: Option<ArchiveFormat>,
}

/// Downloads a directory tree as tar or zip, streamed (files with their modes and times,
/// symlinks as links; devices and FIFOs are left out).
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}/disks/{position}/volumes/{volume}/archive",
    tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path), ("position" = String, Path), ("volume" = String, Path), ArchiveParams),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>,
        description = "application/x-tar, or application/zip with format=zip"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_archive(
    State(state): State<AppState>,
    who: Principal,
    Path((repo, id, position, volume)): Path<(String, String, String, String)>,
    Params(query): Params<ArchiveParams>,
) -> ApiResult<Response> {
    let path = inside_path(query.path.as_deref())?;
    let fs = open_fs(&state, &repo, &id, &position, &volume).await?;
    let entry = fs.stat(&path).await.map_err(restore_error)?;
    if entry.kind != EntryKind::Dir {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not_a_directory", format!("{path} is not a directory")));
    }
    let format = query.format.unwrap_or_default();
    let target = format!("{repo}/{id}/{position}/{volume}:{path}");
    state
        .catalog
        .audit(&who.actor, "restore-point.archive", Some(&target), Some(&format!("{format:?}").to_lowercase()))
        .await?;
    // Members are named from the directory's own name down ("etc/hostname").
    let top = if entry.path == "/" { volume.replace('/', "-") } else { entry.name.clone() };
    let fs = fs.file_system();
    Ok(match format {
        ArchiveFormat::Tar => streamed("application/x-tar", &format!("{top}.tar"), None, move |out| {
            write_archive(fs.as_ref(), &path, &top, TarArchive(tar::Builder::new(out)))
        }),
        ArchiveFormat::Zip => streamed("application/zip", &format!("{top}.zip"), None, move |out| {
            write_archive(fs.as_ref(), &path, &top, ZipArchive(zip::ZipWriter::new_stream(out)))
        }),
    })
}

/// `top/relative/path` of an entry below the archived directory `root`.
fn member_name(root: &str, top: &str, entry: &Entry) -> String {
    let relative = entry.path.strip_prefix(root).unwrap_or(&entry.path).trim_start_matches('/');
    format!("{top}/{relative}")
}

/// One archive format: how each kind of member is written.
trait ArchiveWriter {
    fn dir(&mut self, name: &str, entry: &Entry) -> std::io::Result<()>;
    fn file(&mut self, name: &str, entry: &Entry, content: &mut dyn Read) -> std::io::Result<()>;
    fn symlink(&mut self, name: &str, entry: &Entry, target: &str) -> std::io::Result<()>;
    fn finish(self) -> std::io::Result<()>;
}

/// Writes the tree below `root` (devices and FIFOs left out) as members named from `top` down.
fn write_archive(fs: &dyn FileSystem, root: &str, top: &str, mut archive: impl ArchiveWriter) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let root_entry = fs.stat(root).map_err(|e| fail(root, &e))?;
    archive.dir(top, &root_entry).map_err(|e| fail(root, &e))?;
    for entry in fs.walk(root) {
        let entry = entry.map_err(|e| fail(root, &e))?;
        let name = member_name(root, top, &entry);
        let written = match entry.kind {
            EntryKind::Dir => archive.dir(&name, &entry),
            EntryKind::File => {
                let mut file = fs.open(&entry.path).map_err(|e| fail(&entry.path, &e))?;
                archive.file(&name, &entry, &mut file)
            }
            EntryKind::Symlink => archive.symlink(&name, &entry, entry.symlink_target.as_deref().unwrap_or_default()),
            EntryKind::Other => continue,
        };
        written.map_err(|e| fail(&entry.path, &e))?;
    }
    archive.finish().map_err(|e| fail("finishing the archive", &e))
}

struct TarArchive<W: Write>(tar::Builder<W>);

fn tar_header(entry: &Entry, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid.into());
    header.set_gid(entry.gid.into());
    header.set_mtime(u64::try_from(entry.mtime).unwrap_or(0));
    header
}

impl<W: Write> ArchiveWriter for TarArchive<W> {
    fn dir(&mut self, name: &str, entry: &Entry) -> std::io::Result<()> {
        self.0.append_data(&mut tar_header(entry, tar::EntryType::Directory, 0), format!("{name}/"), std::io::empty())
    }

    fn file(&mut self, name: &str, entry: &Entry, content: &mut dyn Read) -> std::io::Result<()> {
        self.0.append_data(&mut tar_header(entry, tar::EntryType::Regular, entry.size), name, content)
    }

    fn symlink(&mut self, name: &str, entry: &Entry, target: &str) -> std::io::Result<()> {
        self.0.append_link(&mut tar_header(entry, tar::EntryType::Symlink, 0), name, target)
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.0.finish()
    }
}

/// The zip time of a Unix mtime (zip counts local time from 1980; we write UTC).
fn zip_time(mtime: i64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    let Some(t) = Utc.timestamp_opt(mtime, 0).single() else { return zip::DateTime::default() };
    let part = |n: u32| u8::try_from(n).unwrap_or(0);
    let year = u16::try_from(t.year()).unwrap_or(0);
    zip::DateTime::from_date_and_time(
        year,
        part(t.month()),
        part(t.day()),
        part(t.hour()),
        part(t.minute()),
        part(t.second()),
    )
    .unwrap_or_default()
}

/// Zip written forward only (sizes in data descriptors), so it streams.
struct ZipArchive<W: Write>(zip::ZipWriter<zip::write::StreamWriter<W>>);

fn zip_options(entry: &Entry) -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(entry.mode)
        .last_modified_time(zip_time(entry.mtime))
        .large_file(entry.size >= u64::from(u32::MAX))
}

impl<W: Write> ArchiveWriter for ZipArchive<W> {
    fn dir(&mut self, name: &str, entry: &Entry) -> std::io::Result<()> {
        self.0.add_directory(format!("{name}/"), zip_options(entry)).map_err(std::io::Error::other)
    }

    fn file(&mut self, name: &str, entry: &Entry, content: &mut dyn Read) -> std::io::Result<()> {
        self.0.start_file(name, zip_options(entry)).map_err(std::io::Error::other)?;
        std::io::copy(content, &mut self.0).map(drop)
    }

    fn symlink(&mut self, name: &str, entry: &Entry, target: &str) -> std::io::Result<()> {
        self.0.add_symlink(name, target, zip_options(entry)).map_err(std::io::Error::other)
    }

    fn finish(self) -> std::io::Result<()> {
        self.0.finish().map(drop).map_err(std::io::Error::other)
    }
}
