//! Pool-metadata jobs: each run backs the pool's database up into the job's repository
//! (`xenvault_engine::pool_metadata`), tagged with the job and the run, so the schedule's
//! retention counts the database backups its own runs made, as backup jobs count theirs.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use xenvault_engine::pool_metadata::{self, PoolMetadataInfo};
use xenvault_repo::Manifest;

use crate::model::{Job, Run, RunStatus, RunTotals, Schedule, Task, TaskKind, TaskStatus};
use crate::runner::{Frame, Outcome, Recorder, RunSink, Target, forward_progress, new_id, retention_step};

/// Tags of a database backup: the job and the run that made it.
fn tags(job: &Job, run: &Run) -> Vec<String> {
    vec![format!("job:{}", job.id), format!("run:{}", run.id)]
}

/// Runs `run` of a pool-metadata job (called through [`crate::runner::run_backup`]).
pub(crate) async fn run<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    mut run: Run,
    target: Target<'_>,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Outcome {
    let mut frame = Frame::start(job, &mut run, &sink, &cancel).await;
    let cancel = frame.cancel.clone();
    let result = back_up(job, &run, &target, &sink, &cancel, &mut frame.recorder).await;
    frame.settle(&mut run, result);
    if run.status == RunStatus::Success
        && let Some(schedule) = schedule.filter(|s| !s.retention.keeps_everything())
        && let Some(store) = target.store
    {
        let repo = store.repository();
        let runs = sink.runs_of_schedule(&job.id, &schedule.id).await;
        let points = repo.restore_points().await.map(|all| made_by(all, job, &runs)).map_err(Into::into);
        retention_step(schedule, &run, repo, points, &mut frame.recorder).await;
    }
    frame.end(run).await
}

/// The database backups of `all` that the runs `runs` of `job` made.
fn made_by(all: Vec<Manifest>, job: &Job, runs: &[String]) -> Vec<Manifest> {
    let job_tag = format!("job:{}", job.id);
    all.into_iter()
        .filter(|m| PoolMetadataInfo::of(m).is_some() && m.tags.contains(&job_tag))
        .filter(|m| runs.iter().any(|run| m.tags.iter().any(|t| t.strip_prefix("run:") == Some(run.as_str()))))
        .collect()
}

/// The backup itself, recorded as one step.
async fn back_up<S: RunSink>(
    job: &Job,
    run: &Run,
    target: &Target<'_>,
    sink: &Arc<S>,
    cancel: &CancellationToken,
    recorder: &mut Recorder<S>,
) -> Result<RunTotals, String> {
    job.settings.check()?;
    job.check_kind()?;
    let store = target.store.ok_or("the job has no repository to back up into")?;
    let mut task = Task::started(new_id(), &run.id, Some(&recorder.root_id()), TaskKind::Step, "pool database");
    recorder.save(task.clone()).await;
    let progress = forward_progress(sink, run);
    let backed_up = pool_metadata::backup(target.host, store.repository(), tags(job, run), cancel, progress).await;
    task.finished_at = Some(Utc::now());
    let outcome = match backed_up {
        Ok(report) => {
            let info = &report.info;
            task.status = TaskStatus::Success;
            task.subject = Some(info.pool_uuid.clone());
            task.bytes_total = Some(info.bytes);
            task.bytes_read = info.bytes;
            task.bytes_stored = report.bytes_stored;
            task.reason = Some(format!(
                "restore point {} holds the database of pool {} (master {}, xapi {}, sha256 {})",
                report.restore_point, info.pool_name, info.master, info.xapi_version, info.sha256
            ));
            Ok(RunTotals { bytes_read: info.bytes, bytes_stored: report.bytes_stored, ..Default::default() })
        }
        // Stopped by the caller or the job's timeout: the run says which.
        Err(xenvault_engine::Error::Cancelled) => {
            task.status = TaskStatus::Cancelled;
            Ok(RunTotals::default())
        }
        Err(e) => {
            task.status = TaskStatus::Failed;
            task.errors.push(e.to_string());
            Err(format!("pool database backup: {e}"))
        }
    };
    recorder.save(task).await;
    outcome
}
