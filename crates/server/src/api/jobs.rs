//! Job definitions: list, create, read, replace, delete, enable and disable, and run now.
//! Jobs are addressed by id or by name. Every change reaches the scheduler.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{Catalog, ConnectionKind};
use xenvault_jobs::cron::CronSchedule;
use xenvault_jobs::model::{Job, JobKind, Level, Run};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Params};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs, create_job))
        .routes(routes!(get_job, replace_job, delete_job))
        .routes(routes!(enable_job))
        .routes(routes!(disable_job))
        .routes(routes!(run_job))
}

/// The job with this id, else the one with this name.
pub async fn find_job(catalog: &Catalog, key: &str) -> ApiResult<Job> {
    match catalog.job(key).await {
        Err(xenvault_catalog::Error::NotFound { .. }) => Ok(catalog.job_by_name(key).await?),
        found => Ok(found?),
    }
}

/// Refuses what could never run: schedules whose cron line or time zone do not parse,
/// settings no run could honour or the job's kind cannot use, and a job whose pool or
/// repository (unless it keeps snapshots only) is not registered; a mirror job needs its
/// two repositories and no pool, a config-backup job its repository only.
async fn check(catalog: &Catalog, job: &Job) -> ApiResult<()> {
    for schedule in &job.schedules {
        CronSchedule::parse(&schedule.cron, &schedule.timezone).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    if job.kind == JobKind::Sequence {
        return Ok(());
    }
    job.settings.check().map_err(ApiError::invalid)?;
    job.check_kind().map_err(ApiError::invalid)?;
    let mut needed = match &job.mirror {
        // Repository to repository: no pool.
        Some(mirror) => vec![(ConnectionKind::Repository, &mirror.target, "/api/repositories")],
        // The server's own configuration: no pool either.
        None if job.kind == JobKind::ConfigBackup => Vec::new(),
        None => vec![(ConnectionKind::Pool, &job.pool, "/api/pools")],
    };
    if job.settings.snapshot_only.is_none() {
        needed.push((ConnectionKind::Repository, &job.repository, "/api/repositories"));
    }
    for (kind, name, route) in needed {
        match catalog.connection::<serde_json::Value>(kind, name).await {
            Err(xenvault_catalog::Error::NotFound { what, .. }) => {
                return Err(ApiError::invalid(format!("{what} {name:?} is not registered (add it with POST {route})")));
            }
            found => drop(found?),
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [Job]), (status = 401, body = ErrorBody)))]
async fn list_jobs(State(state): State<AppState>) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(state.catalog.jobs().await?))
}

/// Creates a job (its id and its schedules' ids are assigned when left empty).
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = Job,
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 201, body = Job), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_job(
    State(state): State<AppState>,
    who: Principal,
    Body(job): Body<Job>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    check(&state.catalog, &job).await?;
    let job = state.catalog.create_job(job).await?;
    state.executor.job_changed(&job)?;
    state.catalog.audit(&who.actor, "job.create", Some(&job.id), Some(&job.name)).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(get, path = "/api/jobs/{job}", tag = "jobs", params(("job" = String, Path, description = "id or name")),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(find_job(&state.catalog, &key).await?))
}

/// Replaces a job's definition (the id stays).
#[utoipa::path(put, path = "/api/jobs/{job}", tag = "jobs", params(("job" = String, Path, description = "id or name")),
    request_body = Job, security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 200, body = Job), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn replace_job(
    State(state): State<AppState>,
    who: Principal,
    Path(key): Path<String>,
    Body(mut job): Body<Job>,
) -> ApiResult<Json<Job>> {
    check(&state.catalog, &job).await?;
    job.id = find_job(&state.catalog, &key).await?.id;
    let job = state.catalog.update_job(job).await?;
    state.executor.job_changed(&job)?;
    state.catalog.audit(&who.actor, "job.update", Some(&job.id), Some(&job.name)).await?;
    Ok(Json(job))
}

/// Deletes a job; its runs stay in the history.
#[utoipa::path(delete, path = "/api/jobs/{job}", tag = "jobs", params(("job" = String, Path, description = "id or name")),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_job(State(state): State<AppState>, who: Principal, Path(key): Path<String>) -> ApiResult<StatusCode> {
    let job = find_job(&state.catalog, &key).await?;
    state.catalog.delete_job(&job.id).await?;
    state.executor.job_removed(&job.id);
    state.catalog.audit(&who.actor, "job.delete", Some(&job.id), Some(&job.name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(state: &AppState, who: &Principal, key: &str, enabled: bool) -> ApiResult<Json<Job>> {
    let id = find_job(&state.catalog, key).await?.id;
    let job = state.catalog.set_job_enabled(&id, enabled).await?;
    state.executor.job_changed(&job)?;
    let action = if enabled { "job.enable" } else { "job.disable" };
    state.catalog.audit(&who.actor, action, Some(&job.id), Some(&job.name)).await?;
    Ok(Json(job))
}

/// Lets the job's schedules fire again.
#[utoipa::path(post, path = "/api/jobs/{job}/enable", tag = "jobs", params(("job" = String, Path, description = "id or name")),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn enable_job(State(state): State<AppState>, who: Principal, Path(key): Path<String>) -> ApiResult<Json<Job>> {
    set_enabled(&state, &who, &key, true).await
}

/// Stops the job's schedules from firing (it can still be run by hand).
#[utoipa::path(post, path = "/api/jobs/{job}/disable", tag = "jobs", params(("job" = String, Path, description = "id or name")),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 200, body = Job), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn disable_job(State(state): State<AppState>, who: Principal, Path(key): Path<String>) -> ApiResult<Json<Job>> {
    set_enabled(&state, &who, &key, false).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunNow {
    /// The level of this run (the default: incremental, full when there is nothing to build on).
    pub level: Option<Level>,
}

/// Starts a run of the job now, whether its schedules are enabled or not; 409 while the
/// job runs.
#[utoipa::path(post, path = "/api/jobs/{job}/run", tag = "jobs",
    params(("job" = String, Path, description = "id or name"), RunNow),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 202, body = Run, description = "the run, started"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn run_job(
    State(state): State<AppState>,
    who: Principal,
    Path(key): Path<String>,
    Params(request): Params<RunNow>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let job = find_job(&state.catalog, &key).await?;
    let (job_id, job_name) = (job.id.clone(), job.name.clone());
    let run = state.executor.run_now(&state, job, request.level).await?;
    let detail = format!("{job_name}: run {}", run.id);
    state.catalog.audit(&who.actor, "job.run", Some(&job_id), Some(&detail)).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}
