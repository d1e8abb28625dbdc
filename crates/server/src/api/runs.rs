//! Run history: list with filters, one run with its task tree, its log, a live feed
//! (Server-Sent Events) of its progress until it finishes, and cancelling a run.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{LogLine, RunDetail, RunPage, RunQuery};
use xenvault_jobs::model::{Run, RunStatus};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Params;

/// How often a live feed looks for changes.
const FEED_POLL: Duration = Duration::from_millis(500);
const LOG_PAGE: u32 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(run_log))
        .routes(routes!(run_events))
        .routes(routes!(cancel_run))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Job id.
    pub job: Option<String>,
    pub status: Option<RunStatus>,
    /// Runs that covered this VM (uuid or name).
    pub vm: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunFilter),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_runs(State(state): State<AppState>, Params(filter): Params<RunFilter>) -> ApiResult<Json<RunPage>> {
    let query = RunQuery {
        job_id: filter.job,
        status: filter.status,
        vm: filter.vm,
        since: filter.since,
        until: filter.until,
        limit: filter.limit,
        offset: filter.offset,
    };
    Ok(Json(state.catalog.runs(&query).await?))
}

/// A run and its task tree (run → VM → disk → steps).
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs", params(("id" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = RunDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<RunDetail>> {
    Ok(Json(state.catalog.run(&id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogFilter {
    /// Lines after this id (a follower passes the last id it saw).
    pub after: Option<i64>,
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// The run's log lines, oldest first.
#[utoipa::path(get, path = "/api/runs/{id}/log", tag = "runs", params(("id" = String, Path), LogFilter),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [LogLine]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn run_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Params(filter): Params<LogFilter>,
) -> ApiResult<Json<Vec<LogLine>>> {
    state.catalog.run(&id).await?;
    Ok(Json(state.catalog.run_logs(&id, filter.after, filter.limit.unwrap_or(LOG_PAGE)).await?))
}

/// Live progress: `run` events (the run and its task tree, whenever it changed), `log`
/// events (each new log line) and `progress` events (bytes done of each disk read, while
/// the run goes), ending after the `run` event that shows it finished.
#[utoipa::path(get, path = "/api/runs/{id}/events", tag = "runs", params(("id" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "event: run (data: RunDetail as JSON), event: log (data: LogLine as JSON), event: progress (data: [WorkProgress] as JSON)"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    state.catalog.run(&id).await?;
    Ok(Sse::new(feed(state, id)).keep_alive(KeepAlive::default()))
}

/// What a feed has sent so far.
struct Feed {
    state: AppState,
    id: String,
    last_detail: Option<String>,
    last_progress: Option<String>,
    last_log: Option<i64>,
    pending: std::collections::VecDeque<Event>,
    polled: bool,
    done: bool,
}

fn feed(state: AppState, id: String) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Feed {
        state,
        id,
        last_detail: None,
        last_progress: None,
        last_log: None,
        pending: Default::default(),
        polled: false,
        done: false,
    };
    futures::stream::unfold(start, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                return Some((Ok(event), feed));
            }
            if feed.done {
                return None;
            }
            if feed.polled {
                tokio::select! {
                    () = tokio::time::sleep(FEED_POLL) => {}
                    () = feed.state.stopping.cancelled() => return None,
                }
            }
            feed.polled = true;
            if let Err(e) = feed.poll().await {
                tracing::warn!(run = %feed.id, "live feed: {e}");
                return None;
            }
        }
    })
}

impl Feed {
    /// Queues new log lines, then the run if it changed (so its final state comes last).
    async fn poll(&mut self) -> Result<(), xenvault_catalog::Error> {
        let lines = self.state.catalog.run_logs(&self.id, self.last_log, LOG_PAGE).await?;
        for line in lines {
            self.last_log = Some(line.id);
            self.pending.push_back(json_event("log", &line));
        }
        if let Some(progress) = self.state.executor.progress(&self.id) {
            let text = serde_json::to_string(&progress).unwrap_or_default();
            if self.last_progress.as_ref() != Some(&text) {
                self.pending.push_back(Event::default().event("progress").data(&text));
                self.last_progress = Some(text);
            }
        }
        let detail = self.state.catalog.run(&self.id).await?;
        self.queue_detail(&detail);
        Ok(())
    }

    fn queue_detail(&mut self, detail: &RunDetail) {
        let text = serde_json::to_string(detail).unwrap_or_default();
        if self.last_detail.as_ref() != Some(&text) {
            self.pending.push_back(Event::default().event("run").data(&text));
            self.last_detail = Some(text);
        }
        self.done = detail.run.status.is_finished();
    }
}

/// Describes each event of the live feed in the document: utoipa has no `contentSchema`,
/// which says what the JSON inside an event's `data` is, so it is written here.
pub fn describe_event_stream(doc: &mut serde_json::Value) {
    use serde_json::json;
    let event = |name: &str, data: serde_json::Value| {
        json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": { "const": name },
                "data": { "type": "string", "contentMediaType": "application/json", "contentSchema": data },
                "id": { "type": "string" },
                "retry": { "type": "integer" },
            },
        })
    };
    let progress = json!({ "type": "array", "items": { "$ref": "#/components/schemas/WorkProgress" } });
    let schema = json!({ "oneOf": [
        event("run", json!({ "$ref": "#/components/schemas/RunDetail" })),
        event("log", json!({ "$ref": "#/components/schemas/LogLine" })),
        event("progress", progress),
    ]});
    let media = doc.pointer_mut("/paths/~1api~1runs~1{id}~1events/get/responses/200/content/text~1event-stream");
    if let Some(media) = media {
        media["schema"] = schema;
    }
}

fn json_event<T: serde::Serialize>(name: &str, value: &T) -> Event {
    Event::default().event(name).data(serde_json::to_string(value).unwrap_or_default())
}

/// Cancels a running run: its VMs not started are skipped, running transfers stop, their
/// snapshots are removed and nothing more is committed; the run ends "cancelled".
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs", params(("id" = String, Path)),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 202, body = Run, description = "cancelling; the run ends shortly"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the run has finished, or is not running on this server")))]
async fn cancel_run(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let run = state.catalog.run(&id).await?.run;
    if run.status.is_finished() {
        return Err(ApiError::conflict(format!("run {id} has finished ({:?})", run.status).to_lowercase()));
    }
    if !state.executor.cancel(&id) {
        return Err(ApiError::conflict(format!("run {id} is not running on this server")));
    }
    state.catalog.audit(&who.actor, "run.cancel", Some(&id), None).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}
