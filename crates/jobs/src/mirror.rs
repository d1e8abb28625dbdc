//! Mirror jobs: each run mirrors restore points of the job's repository to its target
//! repository (`xenvault_repo::mirror`): only missing chunks move, the schedule's retention
//! is the target's (per VM; a manual run applies none), `immutability_days` locks the
//! mirrored points there, and a verify pass checks them unless the job says not to.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use xenvault_repo::Repository;
use xenvault_repo::backend::RetentionMode;
use xenvault_repo::mirror::{MirrorLock, MirrorOptions, MirrorReport};

use crate::model::{Job, Run, RunTotals, Schedule, Task, TaskKind, TaskStatus};
use crate::runner::{Frame, Outcome, Recorder, RunSink, Step, forward_progress, keep_policy, new_id, step_tasks};

/// The two repositories of a mirror job, opened by the caller: the job's `repository`
/// and its `mirror.target`.
pub struct Repositories<'a> {
    pub source: &'a Repository,
    pub target: &'a Repository,
}

/// Runs `run` (created by the caller, e.g. queued in the catalog) of a mirror job.
pub async fn run<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    mut run: Run,
    repos: Repositories<'_>,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Outcome {
    let mut frame = Frame::start(job, &mut run, &sink, &cancel).await;
    let cancel = frame.cancel.clone();
    let result = mirror(job, schedule, &run, &repos, &sink, &cancel, &mut frame.recorder).await;
    frame.settle(&mut run, result);
    frame.end(run).await
}

fn options(job: &Job, schedule: Option<&Schedule>) -> Result<MirrorOptions, String> {
    job.settings.check()?;
    job.check_kind()?;
    let mirror = job.mirror.as_ref().ok_or("the job has no mirror target")?;
    Ok(MirrorOptions {
        vms: job.selection.vms.clone(),
        job: mirror.source_job.clone(),
        latest: mirror.latest,
        retention: schedule.filter(|s| !s.retention.keeps_everything()).map(|s| keep_policy(&s.retention)),
        lock: job.settings.immutability_days.map(|days| MirrorLock { days, mode: RetentionMode::Governance }),
        verify: mirror.verify,
    })
}

/// The mirror, recorded as one step with its retention, lock and verify as steps under it.
async fn mirror<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    run: &Run,
    repos: &Repositories<'_>,
    sink: &Arc<S>,
    cancel: &CancellationToken,
    recorder: &mut Recorder<S>,
) -> Result<RunTotals, String> {
    let options = options(job, schedule)?;
    let target = job.mirror.as_ref().map_or("", |m| m.target.as_str());
    let name = format!("mirror to {target}");
    let mut task = Task::started(new_id(), &run.id, Some(&recorder.root_id()), TaskKind::Step, &name);
    recorder.save(task.clone()).await;
    let progress = forward_progress(sink, run);
    let mirrored = xenvault_repo::mirror::mirror(repos.source, repos.target, &options, progress, cancel).await;
    task.finished_at = Some(Utc::now());
    let report = match mirrored {
        Ok(report) => report,
        // Stopped by the caller or the job's timeout (the run says which); what was sent
        // stays on the target for the next run.
        Err(xenvault_repo::Error::Cancelled) => {
            task.status = TaskStatus::Cancelled;
            recorder.save(task).await;
            return Ok(RunTotals::default());
        }
        Err(e) => {
            task.status = TaskStatus::Failed;
            task.errors.push(e.to_string());
            recorder.save(task).await;
            return Err(format!("{name}: {e}"));
        }
    };
    task.status = TaskStatus::Success;
    task.bytes_read = report.bytes_sent;
    task.bytes_stored = report.bytes_stored;
    task.reason = Some(format!(
        "{} restore points copied, {} already there, {} not sent (the target's retention would remove them); \
         {} chunks sent ({} bytes)",
        report.copied.len(),
        report.skipped.len(),
        report.not_kept.len(),
        report.chunks_sent,
        report.bytes_sent
    ));
    let damage = report.found_damage();
    if damage {
        task.status = TaskStatus::Failed;
        task.errors.push("the verify pass found damage on the target".into());
    }
    recorder.save(task.clone()).await;
    for step in step_tasks(&task, steps(&report)) {
        recorder.save(step).await;
    }
    if damage {
        return Err(format!("{name}: the verify pass found damage on the target"));
    }
    Ok(RunTotals { bytes_read: report.bytes_sent, bytes_stored: report.bytes_stored, ..Default::default() })
}

/// What followed the copy on the target: retention, lock, verify.
fn steps(report: &MirrorReport) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(forget) = &report.forget {
        let freed = forget.prune.as_ref().map_or(0, |gc| gc.bytes_deleted);
        steps.push(Step::done(format!(
            "retention on the target: {} restore points kept, {} removed, {freed} bytes freed",
            forget.keep.len(),
            forget.remove.len()
        )));
    }
    if let Some(lock) = &report.lock {
        steps.push(Step::done(format!(
            "{} restore points locked on the target until {} ({:?} mode, {} objects)",
            lock.restore_points.len(),
            lock.until.format("%Y-%m-%d %H:%M UTC"),
            lock.mode,
            lock.objects
        )));
    }
    if let Some(verify) = &report.verify {
        let checked = format!(
            "verify on the target: {} restore points, {} packs, {} chunks checked",
            verify.restore_points_checked, verify.packs_checked, verify.chunks_checked
        );
        steps.push(if verify.found_damage() {
            let mut damaged: Vec<String> = verify.damaged_restore_points.keys().cloned().collect();
            damaged.extend(verify.bad_chunks.iter().map(|b| format!("bad chunk {} in pack {}", b.id, b.pack)));
            Step::failed(checked, format!("damage found: {}", damaged.join(", ")))
        } else {
            Step::done(checked)
        });
    }
    steps
}
