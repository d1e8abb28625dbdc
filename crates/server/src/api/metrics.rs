//! Prometheus metrics (text exposition format) from the catalog: per job its last run's
//! result, bytes and duration, its last success and failure count; per VM its last
//! successful backup; runs going now.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{Catalog, RunQuery};
use xenvault_jobs::model::RunStatus;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics (scrape with a read-only token as bearer).
#[utoipa::path(get, path = "/metrics", tag = "health",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let text = render(&state.catalog).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

/// A label value with `\`, `"` and newlines escaped as the format wants.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family { name, help, kind, samples: Vec::new() }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        self.samples.push((labels.join(","), value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", self.name, self.help, self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = if labels.is_empty() {
                writeln!(out, "{} {value}", self.name)
            } else {
                writeln!(out, "{}{{{labels}}} {value}", self.name)
            };
        }
    }
}

const STATUSES: [RunStatus; 5] =
    [RunStatus::Success, RunStatus::Partial, RunStatus::Failed, RunStatus::Cancelled, RunStatus::Interrupted];

fn status_text(status: RunStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

async fn count(catalog: &Catalog, job_id: Option<&str>, status: RunStatus) -> Result<u64, xenvault_catalog::Error> {
    let query =
        RunQuery { job_id: job_id.map(str::to_owned), status: Some(status), limit: Some(1), ..Default::default() };
    Ok(catalog.runs(&query).await?.total)
}

pub async fn render(catalog: &Catalog) -> Result<String, xenvault_catalog::Error> {
    let mut last_status =
        Family::new("xenvault_job_last_run_status", "gauge", "1 for the status of the job's last finished run");
    let mut last_finish =
        Family::new("xenvault_job_last_run_timestamp_seconds", "gauge", "When the job's last finished run ended");
    let mut last_duration =
        Family::new("xenvault_job_last_run_duration_seconds", "gauge", "How long the job's last finished run took");
    let mut bytes_read = Family::new(
        "xenvault_job_last_run_bytes_read",
        "gauge",
        "Bytes the job's last finished run read from the pool",
    );
    let mut bytes_stored = Family::new(
        "xenvault_job_last_run_bytes_stored",
        "gauge",
        "Bytes the job's last finished run added to the repository",
    );
    let mut last_success =
        Family::new("xenvault_job_last_success_timestamp_seconds", "gauge", "When the job last succeeded");
    let mut runs = Family::new("xenvault_job_runs", "gauge", "Finished runs of the job in the history, by status");
    let mut vm_success = Family::new(
        "xenvault_vm_last_success_timestamp_seconds",
        "gauge",
        "When a job last backed the VM up successfully",
    );
    let mut enabled = Family::new("xenvault_job_enabled", "gauge", "1 when the job's schedules fire");
    let mut running = Family::new("xenvault_runs_running", "gauge", "Runs going now");

    for job in catalog.jobs().await? {
        let name = job.name.as_str();
        enabled.add(&[("job", name)], f64::from(u8::from(job.enabled)));
        for status in STATUSES {
            let text = status_text(status);
            runs.add(&[("job", name), ("status", &text)], count(catalog, Some(&job.id), status).await? as f64);
        }
        let recent =
            catalog.runs(&RunQuery { job_id: Some(job.id.clone()), limit: Some(20), ..Default::default() }).await?;
        if let Some(last) = recent.runs.iter().find(|r| r.status.is_finished()) {
            for status in STATUSES {
                let text = status_text(status);
                last_status.add(&[("job", name), ("status", &text)], f64::from(u8::from(last.status == status)));
            }
            if let Some(end) = last.finished_at {
                last_finish.add(&[("job", name)], end.timestamp() as f64);
                if let Some(start) = last.started_at {
                    last_duration.add(&[("job", name)], (end - start).num_milliseconds() as f64 / 1000.0);
                }
            }
            bytes_read.add(&[("job", name)], last.totals.bytes_read as f64);
            bytes_stored.add(&[("job", name)], last.totals.bytes_stored as f64);
        }
        let success = RunQuery {
            job_id: Some(job.id.clone()),
            status: Some(RunStatus::Success),
            limit: Some(1),
            ..Default::default()
        };
        if let Some(at) = catalog.runs(&success).await?.runs.first().and_then(|r| r.finished_at) {
            last_success.add(&[("job", name)], at.timestamp() as f64);
        }
    }
    for vm in catalog.vm_last_successes(None).await? {
        vm_success.add(
            &[("vm_uuid", &vm.vm_uuid), ("vm", &vm.vm_name), ("job_id", &vm.job_id)],
            vm.finished_at.timestamp() as f64,
        );
    }
    running.add(&[], {
        let query = RunQuery { status: Some(RunStatus::Running), limit: Some(1), ..Default::default() };
        catalog.runs(&query).await?.total as f64
    });

    let mut out = String::new();
    for family in [
        &last_status,
        &last_finish,
        &last_duration,
        &bytes_read,
        &bytes_stored,
        &last_success,
        &runs,
        &vm_success,
        &enabled,
        &running,
    ] {
        family.write(&mut out);
    }
    Ok(out)
}
