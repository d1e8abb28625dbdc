//! Figures per day over the run history, for the dashboard's chart: bytes stored and time
//! spent running, on the viewer's calendar days.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Duration, FixedOffset, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::RunQuery;
use xenvault_jobs::model::{Run, RunStatus};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Params;

const DEFAULT_DAYS: u32 = 30;
const MAX_DAYS: u32 = 366;
/// Runs read from the catalog at a time.
const PAGE: u32 = 1000;
/// The widest offset from UTC a time zone has (UTC+14:00).
const MAX_OFFSET_MINUTES: i32 = 14 * 60;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(daily_stats))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DailyQuery {
    /// How many days, today included (default 30).
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
    /// The viewer's offset from UTC in minutes (east positive, e.g. 60 for UTC+01:00), so
    /// days are the viewer's; default 0.
    #[param(minimum = -840, maximum = 840)]
    pub utc_offset_minutes: Option<i32>,
}

/// One calendar day's runs (by the day they started).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DayStats {
    pub date: NaiveDate,
    pub runs: u32,
    /// Runs that ended failed, interrupted or cancelled.
    pub failed: u32,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// Seconds the day's finished runs took, added up.
    pub run_seconds: u64,
    /// The longest of them.
    pub longest_run_seconds: u64,
}

/// Each day of the period, oldest first, days without runs included (as zeros). A
/// sequence's run is not counted beside its member runs, which hold the work.
#[utoipa::path(get, path = "/api/stats/daily", tag = "runs", params(DailyQuery),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [DayStats]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn daily_stats(
    State(state): State<AppState>,
    Params(query): Params<DailyQuery>,
) -> ApiResult<Json<Vec<DayStats>>> {
    let days = query.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid(format!("days {days}: give 1 to {MAX_DAYS}")));
    }
    let minutes = query.utc_offset_minutes.unwrap_or(0);
    // The range is checked before the multiplication, which a wild offset would overflow.
    let zone = Some(minutes)
        .filter(|m| (-MAX_OFFSET_MINUTES..=MAX_OFFSET_MINUTES).contains(m))
        .and_then(|m| FixedOffset::east_opt(m * 60))
        .ok_or_else(|| ApiError::invalid(format!("utc_offset_minutes {minutes}: give -840 to 840")))?;
    let today = Utc::now().with_timezone(&zone).date_naive();
    let first = today - Duration::days(i64::from(days) - 1);
    let since = first.and_hms_opt(0, 0, 0).and_then(|t| t.and_local_timezone(zone).single()).map(|t| t.to_utc());
    let runs = runs_since(&state, since).await?;
    Ok(Json(per_day(&runs, zone, first, today)))
}

/// Every run queued at or after `since`, through the catalog's pages.
async fn runs_since(state: &AppState, since: Option<DateTime<Utc>>) -> ApiResult<Vec<Run>> {
    let mut runs = Vec::new();
    loop {
        let query = RunQuery { since, limit: Some(PAGE), offset: Some(runs.len() as u64), ..Default::default() };
        let page = state.catalog.runs(&query).await?;
        let last_page = page.runs.len() < PAGE as usize;
        runs.extend(page.runs);
        if last_page {
            return Ok(runs);
        }
    }
}

fn per_day(runs: &[Run], zone: FixedOffset, first: NaiveDate, last: NaiveDate) -> Vec<DayStats> {
    let mut days: BTreeMap<NaiveDate, DayStats> = first
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|date| (date, DayStats { date, ..Default::default() }))
        .collect();
    let parents: HashSet<&str> = runs.iter().filter_map(|r| r.parent_run_id.as_deref()).collect();
    for run in runs.iter().filter(|r| !parents.contains(r.id.as_str())) {
        let started = run.started_at.unwrap_or(run.queued_at);
        let Some(day) = days.get_mut(&started.with_timezone(&zone).date_naive()) else { continue };
        day.runs += 1;
        day.failed +=
            u32::from(matches!(run.status, RunStatus::Failed | RunStatus::Interrupted | RunStatus::Cancelled));
        day.bytes_read += run.totals.bytes_read;
        day.bytes_stored += run.totals.bytes_stored;
        if let Some(finished) = run.finished_at {
            let seconds = u64::try_from((finished - started).num_seconds()).unwrap_or(0);
            day.run_seconds += seconds;
            day.longest_run_seconds = day.longest_run_seconds.max(seconds);
        }
    }
    days.into_values().collect()
}
