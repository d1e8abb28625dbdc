//! The VMs of the registered pools and how well they are protected: the jobs whose
//! selection covers each now and its newest restore point; and the live preview of what a
//! selection matches, which the job form shows while the admin edits it.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{ConnectionKind, RestorePointEntry};
use xenvault_engine::selection::{SelectOptions, Selector, select};
use xenvault_jobs::model::{JobKind, Selection};
use xenvault_jobs::selection::resolve_among;
use xenvault_pool::config::PoolEntry;
use xenvault_pool::records::{HostName, Vm};
use xenvault_repo::Manifest;
use xenvault_types::metadata::BackupRun;

use crate::AppState;
use crate::api::connections::{RepositorySettings, pool_login};
use crate::api::restore_points::repository;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Params};

const DEFAULT_DAYS: u32 = 2;
const MAX_DAYS: u32 = 3650;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(vm_protection)).routes(routes!(preview_selection))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProtectionQuery {
    /// A VM is protected when it is in a job and has a restore point this recent (default 2 days).
    #[param(minimum = 1, maximum = 3650)]
    pub days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobRef {
    pub id: String,
    pub name: String,
}

/// Where a VM's newest restore point is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewestRestorePoint {
    pub repository: String,
    pub point_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmProtection {
    /// The pool's registered name.
    pub pool: String,
    pub uuid: String,
    pub name: String,
    pub power_state: String,
    pub tags: Vec<String>,
    /// The jobs whose selection covers the VM now.
    pub jobs: Vec<JobRef>,
    pub newest: Option<NewestRestorePoint>,
    pub protected: bool,
    /// Why it is not protected.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Protection {
    pub days: u32,
    /// Unprotected VMs first, then by pool and name.
    pub vms: Vec<VmProtection>,
    /// What could not be looked at (a pool out of reach, a repository that did not open, a
    /// job naming a VM that is gone): the list may be missing VMs or jobs because of these.
    pub problems: Vec<String>,
}

/// The VMs of every registered pool with the jobs that cover them and their newest restore
/// point (the catalog's index, brought up to date from each repository first).
#[utoipa::path(get, path = "/api/vms", tag = "pools", params(ProtectionQuery),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = Protection), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn vm_protection(
    State(state): State<AppState>,
    Params(query): Params<ProtectionQuery>,
) -> ApiResult<Json<Protection>> {
    let days = query.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid(format!("days {days}: give 1 to {MAX_DAYS}")));
    }
    let mut problems = index_restore_points(&state).await?;
    // The jobs that back VMs up: sequences, mirrors and pool metadata cover none themselves.
    let jobs: Vec<_> = state
        .catalog
        .jobs()
        .await?
        .into_iter()
        .filter(|j| matches!(j.kind, JobKind::Backup | JobKind::BackupXva))
        .collect();
    let since = Utc::now() - Duration::days(i64::from(days));
    let mut newest_points = state.catalog.newest_restore_points().await?;
    let mut listed = Vec::new();
    for pool in state.catalog.connections::<PoolEntry>(ConnectionKind::Pool).await? {
        let (vms, hosts) = match pool_vms(&state, &pool.name).await {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!("pool {}: {}", pool.name, e.message));
                continue;
            }
        };
        let mut covering: BTreeMap<String, Vec<JobRef>> = BTreeMap::new();
        for job in jobs.iter().filter(|j| j.pool == pool.name) {
            match resolve_among(&vms, &hosts, &job.selection) {
                Ok(covered) => {
                    for vm in covered {
                        covering
                            .entry(vm.uuid)
                            .or_default()
                            .push(JobRef { id: job.id.clone(), name: job.name.clone() });
                    }
                }
                Err(e) => problems.push(format!("job {}: {e}", job.name)),
            }
        }
        for vm in select(&vms, &hosts, &[Selector::All], SelectOptions::default())
            .map_err(|e| ApiError::internal(e.to_string()))?
        {
            let newest = newest_points.remove(&vm.uuid).map(|p| NewestRestorePoint {
                repository: p.repository,
                point_id: p.point_id,
                created_at: p.created_at,
            });
            let jobs = covering.remove(&vm.uuid).unwrap_or_default();
            let reason = match &newest {
                _ if jobs.is_empty() => Some("in no job".to_owned()),
                None => Some("no restore point".to_owned()),
                Some(point) if point.created_at < since => Some(format!("no restore point in the last {days} days")),
                Some(_) => None,
            };
            listed.push(VmProtection {
                pool: pool.name.clone(),
                uuid: vm.uuid,
                name: vm.name_label,
                power_state: vm.power_state,
                tags: vm.tags,
                jobs,
                newest,
                protected: reason.is_none(),
                reason,
            });
        }
    }
    listed.sort_by(|a, b| (a.protected, &a.pool, &a.name).cmp(&(b.protected, &b.pool, &b.name)));
    Ok(Json(Protection { days, vms: listed, problems }))
}

/// Makes the catalog's restore-point index each registered repository's listing; returns
/// the repositories that could not be read (their entries stay as they were).
async fn index_restore_points(state: &AppState) -> ApiResult<Vec<String>> {
    let mut problems = Vec::new();
    for stored in state.catalog.connections::<RepositorySettings>(ConnectionKind::Repository).await? {
        let listing = match repository(state, &stored.name).await {
            Ok(repo) => repo.restore_points().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.message),
        };
        match listing {
            Ok(points) => {
                let entries: Vec<_> = points.iter().map(|m| index_entry(&stored.name, m)).collect();
                state.catalog.sync_restore_points(&stored.name, &entries).await?;
            }
            Err(e) => problems.push(format!("repository {}: {e}", stored.name)),
        }
    }
    Ok(problems)
}

fn index_entry(repository: &str, manifest: &Manifest) -> RestorePointEntry {
    let run = BackupRun::of(&manifest.metadata);
    RestorePointEntry {
        repository: repository.to_owned(),
        point_id: manifest.id.clone(),
        vm_uuid: manifest.source.id.clone(),
        vm_name: manifest.source.name.clone(),
        job_id: run.as_ref().and_then(|r| r.job_id.clone()),
        run_id: run.and_then(|r| r.run_id),
        schedule_id: None,
        created_at: manifest.time,
        size: manifest.total_size(),
    }
}

/// The pool's VM and host records, read through its stored login.
async fn pool_vms(state: &AppState, name: &str) -> ApiResult<(Vec<Vm>, Vec<HostName>)> {
    let login = pool_login(state, name).await?;
    let unreachable = |e: xenvault_pool::Error| {
        ApiError::new(StatusCode::BAD_GATEWAY, "pool_unreachable", format!("pool {name} ({}): {e}", login.entry.url))
    };
    let host = xenvault_pool::Host::connect(&login).await.map_err(unreachable)?;
    let records = async { Ok::<_, xenvault_pool::Error>((host.vms().await?, host.hosts().await?)) }.await;
    host.logout().await;
    records.map_err(unreachable)
}

/// A VM a selection matches.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PreviewVm {
    pub uuid: String,
    pub name: String,
    pub power_state: String,
    pub tags: Vec<String>,
}

/// The VMs of the pool that `selection` matches now, as a run would back them up (by name);
/// 400 when it names a VM the pool does not have.
#[utoipa::path(post, path = "/api/pools/{name}/preview", tag = "pools", params(("name" = String, Path)),
    request_body = Selection, security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, body = [PreviewVm]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn preview_selection(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(selection): Body<Selection>,
) -> ApiResult<Json<Vec<PreviewVm>>> {
    let (vms, hosts) = pool_vms(&state, &name).await?;
    let matched = resolve_among(&vms, &hosts, &selection).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(
        matched
            .into_iter()
            .map(|vm| PreviewVm { uuid: vm.uuid, name: vm.name_label, power_state: vm.power_state, tags: vm.tags })
            .collect(),
    ))
}
