//! Verifying a repository from the server: the library's verify (every pack read back,
//! authenticated, decrypted and re-hashed) run in the background as a tracked task, its
//! progress live while it runs, its outcome kept in the catalog's settings so the page can
//! say "verified ok 3 h ago" or name the damage long after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{ConnectionKind, WorkProgress};
use xenvault_types::progress::{Progress, Tally};

use crate::AppState;
use crate::api::connections::RepositorySettings;
use crate::api::restore_points::repository;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(last_verify, start_verify))
}

/// The verifies running in this server, by repository name, with their progress.
#[derive(Default)]
pub struct RunningVerifies(Mutex<HashMap<String, (Verify, Arc<Tally>)>>);

impl RunningVerifies {
    fn all(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Verify, Arc<Tally>)>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyStatus {
    Running,
    /// Everything read back intact.
    Ok,
    /// Damage found: see the counts and restore points.
    Damaged,
    /// The verify could not finish (the store unreachable, the server stopped, ...).
    Failed,
}

/// A repository's verify: running, or how the last one ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Verify {
    pub repository: String,
    /// Where the repository was when verified (a result for another location is not shown).
    pub location: String,
    pub status: VerifyStatus,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// While it runs: bytes of packs checked so far.
    pub progress: Vec<WorkProgress>,
    pub packs_checked: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Bad chunks found (and recorded, so the next backup stores their data again).
    pub bad_chunks: usize,
    /// Unreadable pack indexes.
    pub damaged_indexes: usize,
    /// Damaged copies of the config or key slots (rewritten from their intact copy).
    pub damaged_key_objects: usize,
    /// Ids of the restore points the damage touches.
    pub damaged_restore_points: Vec<String>,
    pub restore_points_checked: usize,
    pub error: Option<String>,
}

/// The catalog setting that keeps a repository's last verify.
fn setting_name(repository: &str) -> String {
    format!("repository-verify:{repository}")
}

/// Starts verifying the repository; follow it with GET on the same path. 409 while one runs.
#[utoipa::path(post, path = "/api/repositories/{name}/verify", tag = "repositories", params(("name" = String, Path)),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 202, body = Verify), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start_verify(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Verify>)> {
    let stored = state.catalog.connection::<RepositorySettings>(ConnectionKind::Repository, &name).await?;
    let repo = repository(&state, &name).await?;
    let tally = Tally::new();
    let record = Verify {
        repository: name.clone(),
        location: stored.settings.location.clone(),
        status: VerifyStatus::Running,
        requested_by: who.actor.clone(),
        started_at: Utc::now(),
        finished_at: None,
        progress: Vec::new(),
        packs_checked: 0,
        chunks_checked: 0,
        bytes_checked: 0,
        bad_chunks: 0,
        damaged_indexes: 0,
        damaged_key_objects: 0,
        damaged_restore_points: Vec::new(),
        restore_points_checked: 0,
        error: None,
    };
    {
        let mut running = state.verifies.all();
        if running.contains_key(&name) {
            return Err(ApiError::conflict(format!("repository {name} is being verified already")));
        }
        running.insert(name.clone(), (record.clone(), tally.clone()));
    }
    if let Err(e) = state.catalog.audit(&who.actor, "repository.verify", Some(&name), None).await {
        state.verifies.all().remove(&name);
        return Err(e.into());
    }
    let cancel = state.stopping.child_token();
    let (task_state, mut outcome) = (state.clone(), record.clone());
    tokio::spawn(async move {
        let progress: Arc<dyn Progress> = tally.clone();
        match xenvault_repo::verify::verify(&repo, None, progress, &cancel).await {
            Ok(report) => {
                outcome.status = if report.found_damage() { VerifyStatus::Damaged } else { VerifyStatus::Ok };
                outcome.packs_checked = report.packs_checked;
                outcome.chunks_checked = report.chunks_checked;
                outcome.bytes_checked = report.bytes_checked;
                outcome.bad_chunks = report.bad_chunks.len();
                outcome.damaged_indexes = report.damaged_indexes.len();
                outcome.damaged_key_objects = report.damaged_key_objects.len();
                outcome.damaged_restore_points = report.damaged_restore_points.into_keys().collect();
                outcome.restore_points_checked = report.restore_points_checked;
            }
            Err(e) => {
                outcome.status = VerifyStatus::Failed;
                outcome.error = Some(e.to_string());
            }
        }
        outcome.finished_at = Some(Utc::now());
        if let Err(e) = task_state.catalog.put_setting(&setting_name(&outcome.repository), &outcome, None).await {
            tracing::error!(repository = %outcome.repository, "recording the verify's result: {e}");
        }
        task_state.verifies.all().remove(&outcome.repository);
        tracing::info!(repository = %outcome.repository, status = ?outcome.status, "verify finished");
    });
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// The running verify with its progress, else the last one's result; 404 `never_verified`
/// when the repository (at its current location) was never verified by this server.
#[utoipa::path(get, path = "/api/repositories/{name}/verify", tag = "repositories", params(("name" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = Verify), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn last_verify(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Verify>> {
    let stored = state.catalog.connection::<RepositorySettings>(ConnectionKind::Repository, &name).await?;
    if let Some((running, tally)) = state.verifies.all().get(&name) {
        return Ok(Json(Verify { progress: super::work_progress(tally), ..running.clone() }));
    }
    state
        .catalog
        .setting::<Verify>(&setting_name(&name))
        .await?
        .filter(|last| last.location == stored.settings.location)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "never_verified", format!("repository {name} was never verified"))
        })
}
