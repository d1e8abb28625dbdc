//! The REST API under /api: each area's routes with their OpenAPI description, joined into
//! one router and one document; authorization wraps every route.

mod access;
pub mod connections;
mod export;
mod health;
pub mod instant;
mod jobs;
mod metrics;
pub mod restore_points;
mod restore_targets;
pub mod restores;
mod runs;
mod schedules;
mod stats;
pub mod verify;
mod vms;

use axum::Json;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::auth::{SecuritySchemes, authorize};

#[derive(OpenApi)]
#[openapi(
    info(title = "xenvault", description = "Backup jobs, runs, restore points and restores of XenServer / XCP-ng pools."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "access", description = "Login, tokens, users, audit log"),
        (name = "health", description = "Liveness and metrics"),
        (name = "pools", description = "XenServer / XCP-ng pools the jobs back up"),
        (name = "repositories", description = "Repositories the restore points go to"),
        (name = "jobs", description = "Backup job definitions"),
        (name = "runs", description = "Run history, task trees, logs, live progress"),
        (name = "restore-points", description = "Restore points: listing, browsing disks, volumes and files, downloads"),
        (name = "restores", description = "Restores of VMs, disks and files as tracked tasks"),
    )
)]
struct ApiDoc;

/// The API's routes (not yet given their state) and its OpenAPI document.
pub fn routes() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(access::router())
        .merge(health::router())
        .merge(connections::router())
        .merge(jobs::router())
        .merge(runs::router())
        .merge(restore_points::router())
        .merge(restores::router())
        .merge(export::router())
        .merge(instant::router())
        .merge(metrics::router())
        .merge(vms::router())
        .merge(stats::router())
        .merge(schedules::router())
        .merge(restore_targets::router())
        .merge(verify::router())
        .split_for_parts()
}

/// The routes behind authorization, plus the public document at /api/openapi.json.
pub fn finish(routes: axum::Router<AppState>, doc: utoipa::openapi::OpenApi, state: AppState) -> axum::Router {
    let mut doc = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    runs::describe_event_stream(&mut doc);
    let doc = std::sync::Arc::new(doc);
    routes
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .route("/api/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .with_state(state)
}

/// The state of each piece of work a tally follows, as the API shows it.
pub(crate) fn work_progress(tally: &xenvault_types::progress::Tally) -> Vec<xenvault_catalog::WorkProgress> {
    tally
        .states()
        .into_iter()
        .map(|(key, state)| xenvault_catalog::WorkProgress {
            label: state.label,
            vm: key.vm,
            disk: key.disk,
            phase: serde_json::to_value(key.phase).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            done: state.done,
            total: state.total,
            finished: state.finished,
        })
        .collect()
}
