//! Restores as tracked tasks: a VM, a disk, or files to a directory on the server, started
//! by an operator, run in the background with a cancellation token and the typed progress
//! model, recorded in the catalog (so they stay in the history) with their report or error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{Restore, RestoreKind, RestorePage, RestoreQuery, RestoreStatus};
use xenvault_repo::{Manifest, Repository};
use xenvault_restore::disk::{Attach, DiskRestoreOptions, DiskTarget, Identity, restore_disk};
use xenvault_restore::files::StoredFs;
use xenvault_restore::vm::{Macs, Mode, VmRestoreOptions, restore_vm};
use xenvault_types::progress::{Progress, Tally};

use crate::AppState;
use crate::api::connections::pool_login;
use crate::api::restore_points::{repository, restore_point};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Params};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_restores, start_restore))
        .routes(routes!(get_restore))
        .routes(routes!(cancel_restore))
}

/// The restores running in this server: how to stop each and how far it is.
#[derive(Default)]
pub struct RunningRestores(Mutex<HashMap<String, Running>>);

#[derive(Clone)]
struct Running {
    cancel: CancellationToken,
    tally: Arc<Tally>,
}

impl RunningRestores {
    fn get(&self, id: &str) -> Option<Running> {
        self.0.lock().ok().and_then(|running| running.get(id).cloned())
    }

    fn insert(&self, id: &str, running: Running) {
        if let Ok(mut all) = self.0.lock() {
            all.insert(id.to_owned(), running);
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(id);
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmMode {
    /// A new VM (the original stays as it is).
    #[default]
    New,
    /// Over the original VM's disks: needs `confirm_overwrite`.
    Overwrite,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MacsChoice {
    /// The stored MACs unless the original VM still exists.
    #[default]
    Auto,
    Keep,
    New,
}

/// A whole VM, to the pool it is restored into.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmRestoreRequest {
    pub repository: String,
    /// Its id, or an unambiguous prefix of at least 4 characters.
    pub restore_point: String,
    /// The registered pool to restore into.
    pub pool: String,
    #[serde(default)]
    pub mode: VmMode,
    /// Must be true with mode overwrite: the VM's current disks are replaced.
    #[serde(default)]
    pub confirm_overwrite: bool,
    /// With overwrite: write only what differs.
    #[serde(default)]
    pub differential: bool,
    /// SR uuid for new disks that `sr_map` does not place.
    #[serde(default)]
    pub sr: Option<String>,
    #[serde(default)]
    pub as_template: bool,
    /// Stored SR uuid → target SR uuid.
    #[serde(default)]
    pub sr_map: BTreeMap<String, String>,
    /// Stored network uuid or name → target network uuid.
    #[serde(default)]
    pub network_map: BTreeMap<String, String>,
    #[serde(default)]
    pub macs: MacsChoice,
    /// Start the VM once restored (not with as_template).
    #[serde(default)]
    pub start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    pub vm: String,
    /// A free VBD userdevice of the VM ("1", "2", ...).
    pub userdevice: String,
    /// Plug it into the running VM now.
    #[serde(default)]
    pub plug: bool,
}

/// One disk: into a new VDI on `sr`, or over the existing VDI `vdi` (with `confirm_overwrite`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskRestoreRequest {
    pub repository: String,
    pub restore_point: String,
    pub pool: String,
    /// The disk's position, VDI uuid or name (default: the lowest position).
    #[serde(default)]
    pub disk: Option<String>,
    /// A new VDI on this SR (uuid).
    #[serde(default)]
    pub sr: Option<String>,
    /// The new VDI's name (default: "<label> (restored <time>)").
    #[serde(default)]
    pub name_label: Option<String>,
    /// Attach the new VDI to a VM.
    #[serde(default)]
    pub attach: Option<AttachRequest>,
    /// Over this existing VDI (uuid) instead.
    #[serde(default)]
    pub vdi: Option<String>,
    /// Must be true with `vdi`: its content is replaced.
    #[serde(default)]
    pub confirm_overwrite: bool,
    #[serde(default)]
    pub differential: bool,
    /// Over a VDI a running VM has attached.
    #[serde(default)]
    pub force: bool,
}

/// A file or directory of a stored disk, extracted to a directory on the server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FilesRestoreRequest {
    pub repository: String,
    pub restore_point: String,
    #[serde(default)]
    pub disk: Option<String>,
    /// The volume (p1, vgdata/home, ...; default: the largest file system).
    #[serde(default)]
    pub volume: Option<String>,
    /// Inside the file system; `..` is refused.
    pub path: String,
    /// A path inside the server's restore root (`restore_root`, default
    /// `<data_dir>/restores`) that does not exist yet: nothing there is overwritten, and
    /// no symbolic link on the way is followed.
    pub destination: String,
}

/// What to restore, by `kind`. (The variants do not refuse unknown fields: with the tag
/// beside them, such a schema would match no body.)
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RestoreRequest {
    Vm(VmRestoreRequest),
    Disk(DiskRestoreRequest),
    Files(FilesRestoreRequest),
}

impl RestoreRequest {
    fn kind(&self) -> RestoreKind {
        match self {
            RestoreRequest::Vm(_) => RestoreKind::Vm,
            RestoreRequest::Disk(_) => RestoreKind::Disk,
            RestoreRequest::Files(_) => RestoreKind::Files,
        }
    }

    fn source(&self) -> (&str, &str) {
        match self {
            RestoreRequest::Vm(r) => (&r.repository, &r.restore_point),
            RestoreRequest::Disk(r) => (&r.repository, &r.restore_point),
            RestoreRequest::Files(r) => (&r.repository, &r.restore_point),
        }
    }

    /// Refuses what can be refused before anything runs.
    fn check(&self) -> ApiResult<()> {
        let unconfirmed = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "confirmation_required",
                "an overwrite replaces what is there now: send \"confirm_overwrite\": true",
            )
        };
        match self {
            RestoreRequest::Vm(r) if r.mode == VmMode::Overwrite && !r.confirm_overwrite => Err(unconfirmed()),
            RestoreRequest::Vm(r) if r.start && r.as_template => {
                Err(ApiError::invalid("a template cannot be started: leave out \"start\" or \"as_template\""))
            }
            RestoreRequest::Disk(r) => match (&r.sr, &r.vdi) {
                (Some(_), Some(_)) | (None, None) => {
                    Err(ApiError::invalid("give either \"sr\" (a new VDI) or \"vdi\" (over an existing one)"))
                }
                (None, Some(_)) if !r.confirm_overwrite => Err(unconfirmed()),
                (None, Some(_)) if r.name_label.is_some() || r.attach.is_some() => {
                    Err(ApiError::invalid("\"name_label\" and \"attach\" are for a new VDI (\"sr\")"))
                }
                _ => Ok(()),
            },
            RestoreRequest::Files(r) => {
                crate::api::restore_points::inside_path(Some(&r.path))?;
                let destination = FsPath::new(&r.destination);
                let plain = destination.components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if r.destination.is_empty() || !plain {
                    return Err(ApiError::invalid(format!(
                        "destination {:?}: give a relative path inside the server's restore root, without '..'",
                        r.destination
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A restore with its live progress while it runs.
fn with_progress(mut restore: Restore, state: &AppState) -> Restore {
    if let Some(running) = state.restores.get(&restore.id) {
        restore.progress = super::work_progress(&running.tally);
    }
    restore
}

/// Starts a restore; it runs in the background: follow it with GET /api/restores/{id}.
#[utoipa::path(post, path = "/api/restores", tag = "restores", request_body = RestoreRequest,
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 202, body = Restore), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn start_restore(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<RestoreRequest>,
) -> ApiResult<(StatusCode, Json<Restore>)> {
    request.check()?;
    if let RestoreRequest::Files(r) = &request {
        files_destination(&state.dirs.restores, &r.destination)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "restore_target", e))?;
    }
    let (repo_name, wanted) = request.source();
    let repo = repository(&state, repo_name).await?;
    let m = restore_point(&repo, wanted).await?;
    let client = match &request {
        RestoreRequest::Vm(VmRestoreRequest { pool, .. }) | RestoreRequest::Disk(DiskRestoreRequest { pool, .. }) => {
            let login = pool_login(&state, pool).await?;
            let client = xenvault_pool::host::connect(&login).await.map_err(|e| {
                ApiError::new(StatusCode::BAD_GATEWAY, "pool_unreachable", format!("logging in to pool {pool}: {e}"))
            })?;
            Some(client)
        }
        RestoreRequest::Files(_) => None,
    };
    let record = Restore {
        id: String::new(),
        kind: request.kind(),
        status: RestoreStatus::Running,
        repository: repo_name.to_owned(),
        restore_point: m.id.clone(),
        requested_by: who.actor.clone(),
        request: serde_json::to_value(&request).map_err(|e| ApiError::internal(e.to_string()))?,
        progress: Vec::new(),
        report: None,
        error: None,
        started_at: Utc::now(),
        finished_at: None,
    };
    let record = state.catalog.create_restore(record).await?;
    let detail = format!("{:?} of restore point {} from {repo_name}", record.kind, m.id).to_lowercase();
    state.catalog.audit(&who.actor, "restore.start", Some(&record.id), Some(&detail)).await?;
    // The server's stop cancels it too.
    let running = Running { cancel: state.stopping.child_token(), tally: Tally::new() };
    state.restores.insert(&record.id, running.clone());
    let restore_root = state.dirs.restores.clone();
    let work = Work { repo, manifest: m, client, running, id: record.id.clone(), restore_root };
    tokio::spawn(finish(state.clone(), record.clone(), work.run(request)));
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// What a started restore works with.
struct Work {
    repo: Repository,
    manifest: Manifest,
    client: Option<xenvault_xapi::Client>,
    running: Running,
    id: String,
    /// Where files restores write.
    restore_root: PathBuf,
}

impl Work {
    async fn run(self, request: RestoreRequest) -> Result<serde_json::Value, xenvault_restore::Error> {
        let result = self.restore(&request).await;
        if let Some(client) = &self.client {
            let _ = client.logout().await;
        }
        result
    }

    async fn restore(&self, request: &RestoreRequest) -> Result<serde_json::Value, xenvault_restore::Error> {
        let progress: Arc<dyn Progress> = self.running.tally.clone();
        let cancel = self.running.cancel.clone();
        let identity = Identity { job_id: None, run_id: Some(self.id.clone()) };
        Ok(match (request, &self.client) {
            (RestoreRequest::Vm(r), Some(client)) => {
                let opts = VmRestoreOptions {
                    mode: if r.mode == VmMode::Overwrite { Mode::Overwrite } else { Mode::AsNew },
                    differential: r.differential,
                    sr: r.sr.clone(),
                    as_template: r.as_template,
                    sr_map: r.sr_map.clone().into_iter().collect(),
                    network_map: r.network_map.clone().into_iter().collect(),
                    macs: match r.macs {
                        MacsChoice::Auto => Macs::Auto,
                        MacsChoice::Keep => Macs::Keep,
                        MacsChoice::New => Macs::New,
                    },
                    start: r.start,
                    cancel,
                    identity,
                };
                to_report(&restore_vm(client, &self.repo, &self.manifest, &opts, progress).await?)?
            }
            (RestoreRequest::Disk(r), Some(client)) => {
                let target = match (&r.vdi, &r.sr) {
                    (Some(vdi_uuid), _) => DiskTarget::Existing { vdi_uuid: vdi_uuid.clone() },
                    (None, sr) => DiskTarget::New {
                        sr_uuid: sr.clone().unwrap_or_default(),
                        name_label: r.name_label.clone(),
                        attach: r.attach.as_ref().map(|a| Attach {
                            vm_uuid: a.vm.clone(),
                            userdevice: a.userdevice.clone(),
                            plug: a.plug,
                        }),
                    },
                };
                let opts = DiskRestoreOptions { differential: r.differential, force: r.force, cancel, identity };
                let report =
                    restore_disk(client, &self.repo, &self.manifest, r.disk.as_deref(), &target, &opts, progress).await;
                to_report(&report?)?
            }
            (RestoreRequest::Files(r), _) => {
                let record = self.manifest.disk(r.disk.as_deref())?;
                let reader = xenvault_repo::DiskReader::new(&self.repo, record).await?;
                let disk = xenvault_restore::RepoDisk::new(Arc::new(reader), tokio::runtime::Handle::current());
                let fs = StoredFs::open(disk, r.volume.clone()).await?;
                if cancel.is_cancelled() {
                    return Err(xenvault_restore::Error::Cancelled);
                }
                // Checked again right before writing: a link may have appeared since the request.
                let destination =
                    files_destination(&self.restore_root, &r.destination).map_err(xenvault_restore::Error::Target)?;
                let stats = fs.extract(&r.path, &destination).await?;
                to_report(&FilesReport {
                    destination: destination.display().to_string(),
                    files: stats.files,
                    dirs: stats.dirs,
                    symlinks: stats.symlinks,
                    skipped: stats.skipped,
                    bytes: stats.bytes,
                })?
            }
            (_, None) => return Err(xenvault_restore::Error::Task("no pool session for the restore".into())),
        })
    }
}

/// `destination` (checked by [`RestoreRequest::check`]) under the restore root `root`,
/// which is made (private) if missing. Refused when the path exists, or when a directory on
/// the way is a symbolic link: restored trees carry links, and one restore must not lead
/// the next outside the root.
fn files_destination(root: &FsPath, destination: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("making the restore root {}: {e}", root.display()))?;
    let mut path = root.to_owned();
    for component in FsPath::new(destination).components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{}: a symbolic link is on the way; choose another destination", path.display()));
            }
            Ok(meta) if !meta.is_dir() => return Err(format!("{}: exists and is not a directory", path.display())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(root.join(destination)),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("{}: exists already; choose a new destination", path.display()))
}

/// What a files restore wrote.
#[derive(Debug, Serialize)]
struct FilesReport {
    /// Where on the server.
    destination: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    /// Devices, FIFOs and sockets, which are not recreated.
    skipped: u64,
    bytes: u64,
}

fn to_report(report: &impl Serialize) -> Result<serde_json::Value, xenvault_restore::Error> {
    serde_json::to_value(report).map_err(|e| xenvault_restore::Error::Task(format!("the restore's report: {e}")))
}

/// Records how a restore ended.
async fn finish(
    state: AppState,
    mut record: Restore,
    work: impl Future<Output = Result<serde_json::Value, xenvault_restore::Error>>,
) {
    let result = work.await;
    if let Some(running) = state.restores.get(&record.id) {
        record.progress = super::work_progress(&running.tally);
    }
    match result {
        Ok(report) => {
            record.status = RestoreStatus::Success;
            record.report = Some(report);
        }
        Err(e) => {
            record.status = if e.is_cancelled() { RestoreStatus::Cancelled } else { RestoreStatus::Failed };
            record.error = Some(e.to_string());
        }
    }
    record.finished_at = Some(Utc::now());
    if let Err(e) = state.catalog.update_restore(&record).await {
        tracing::error!(restore = %record.id, "recording the end of the restore: {e}");
    }
    state.restores.remove(&record.id);
    tracing::info!(restore = %record.id, status = ?record.status, "restore finished");
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestoreFilter {
    pub status: Option<RestoreStatus>,
    pub kind: Option<RestoreKind>,
    pub repository: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// Restores, newest first.
#[utoipa::path(get, path = "/api/restores", tag = "restores", params(RestoreFilter),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = RestorePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_restores(
    State(state): State<AppState>,
    Params(filter): Params<RestoreFilter>,
) -> ApiResult<Json<RestorePage>> {
    let query = RestoreQuery {
        status: filter.status,
        kind: filter.kind,
        repository: filter.repository,
        limit: filter.limit,
        offset: filter.offset,
    };
    let mut page = state.catalog.restores(&query).await?;
    page.restores = page.restores.into_iter().map(|r| with_progress(r, &state)).collect();
    Ok(Json(page))
}

/// A restore: its status, progress, and report or error.
#[utoipa::path(get, path = "/api/restores/{id}", tag = "restores", params(("id" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = Restore), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_restore(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Restore>> {
    Ok(Json(with_progress(state.catalog.restore(&id).await?, &state)))
}

/// Cancels a running restore: what it created in the pool is removed, what it overwrote
/// put back. It ends as "cancelled" shortly after.
#[utoipa::path(post, path = "/api/restores/{id}/cancel", tag = "restores", params(("id" = String, Path)),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 202, body = Restore), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_restore(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Restore>)> {
    let restore = state.catalog.restore(&id).await?;
    let Some(running) = state.restores.get(&id) else {
        return Err(ApiError::conflict(
            format!("restore {id} is not running (it is {:?})", restore.status).to_lowercase(),
        ));
    };
    running.cancel.cancel();
    state.catalog.audit(&who.actor, "restore.cancel", Some(&id), None).await?;
    Ok((StatusCode::ACCEPTED, Json(with_progress(restore, &state))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrites_need_their_confirmation_and_one_disk_target() {
        let vm: RestoreRequest = serde_json::from_value(serde_json::json!({
            "kind": "vm", "repository": "r", "restore_point": "abcd", "pool": "p", "mode": "overwrite"}))
        .unwrap();
        assert_eq!(vm.check().unwrap_err().code, "confirmation_required");
        let disk = |extra: serde_json::Value| {
            let mut body = serde_json::json!({"kind": "disk", "repository": "r", "restore_point": "abcd", "pool": "p"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<RestoreRequest>(body).unwrap().check()
        };
        assert_eq!(disk(serde_json::json!({})).unwrap_err().code, "invalid");
        assert_eq!(disk(serde_json::json!({"vdi": "v"})).unwrap_err().code, "confirmation_required");
        assert!(disk(serde_json::json!({"vdi": "v", "confirm_overwrite": true})).is_ok());
        assert!(disk(serde_json::json!({"sr": "s"})).is_ok());
    }
}
