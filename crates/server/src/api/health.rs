//! Whether the server is up, and what it runs on.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok" when the catalog answers.
    pub status: String,
    pub version: String,
    /// "sqlite" or "postgres".
    pub catalog: String,
    pub uptime_secs: u64,
}

/// The server is up and its catalog answers.
#[utoipa::path(get, path = "/api/health", tag = "health",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = Health), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.catalog.users().await?;
    let catalog = match state.catalog.engine().await {
        xenvault_catalog::Engine::Sqlite => "sqlite",
        xenvault_catalog::Engine::Postgres => "postgres",
    };
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        catalog: catalog.into(),
        uptime_secs: state.started.elapsed().as_secs(),
    }))
}
