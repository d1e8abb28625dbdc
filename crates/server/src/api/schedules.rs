//! Schedules read for people: a cron line in words and the next times it fires in its time
//! zone, as the job form shows them while the admin types.

use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_jobs::cron::CronSchedule;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Params;

const DEFAULT_COUNT: u32 = 5;
const MAX_COUNT: u32 = 50;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(next_runs))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NextRunsQuery {
    /// minute hour day month weekday, e.g. `0 2 * * *`.
    pub cron: String,
    /// IANA time zone, e.g. Europe/Berlin.
    pub timezone: String,
    /// How many of the next times (default 5).
    #[param(minimum = 1, maximum = 50)]
    pub count: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NextRuns {
    pub cron: String,
    pub timezone: String,
    /// The line in words, e.g. "At 02:00.".
    pub description: String,
    /// The next times it fires, soonest first (fewer when the line fires less often, e.g. 30 February never).
    pub next: Vec<DateTime<Utc>>,
}

/// A cron line in words and the next times it fires; 400 for a line or a time zone that
/// does not parse.
#[utoipa::path(get, path = "/api/schedules/next", tag = "jobs", params(NextRunsQuery),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = NextRuns), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn next_runs(Params(query): Params<NextRunsQuery>) -> ApiResult<Json<NextRuns>> {
    let count = query.count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(ApiError::invalid(format!("count {count}: give 1 to {MAX_COUNT}")));
    }
    let schedule = CronSchedule::parse(&query.cron, &query.timezone).map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut next = Vec::new();
    let mut after = Utc::now();
    while next.len() < count as usize
        && let Some(at) = schedule.next_after(after)
    {
        next.push(at);
        after = at;
    }
    Ok(Json(NextRuns { description: schedule.describe(), cron: query.cron, timezone: query.timezone, next }))
}
