//! The job kinds beside backups, run by the runner against the in-process simulator:
//! pool-metadata (the pool's database into the repository, tagged with its job and run,
//! kept by the schedule's retention) and mirror (restore points to a second repository
//! with its own key, the schedule's retention on the target, verify, nothing sent twice,
//! cancellation); and what their definitions may not say.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Env, MemorySink, debian_web, env, job, new_run, new_store};
use tokio_util::sync::CancellationToken;
use xenvault_engine::pool_metadata::PoolMetadataInfo;
use xenvault_engine::store::Store;
use xenvault_jobs::mirror::Repositories;
use xenvault_jobs::model::{
    Job, JobKind, Mirror, RunStatus, Selection, SmartSelection, SnapshotOnly, Task, TaskKind, TaskStatus,
};
use xenvault_jobs::runner::{Outcome, RunSink};
use xenvault_repo::{DiskReader, Manifest, Repository};

fn metadata_job() -> Job {
    let mut job = job(Selection::default());
    job.kind = JobKind::PoolMetadata;
    job
}

fn mirror_job() -> Job {
    let mut job = job(debian_web());
    job.id = "mirror-1".into();
    job.kind = JobKind::Mirror;
    job.mirror =
        Some(Mirror { target: "offsite".into(), latest: false, source_job: Some("job-1".into()), verify: true });
    job
}

fn step<'a>(outcome: &'a Outcome, name: &str) -> &'a Task {
    outcome.tasks.iter().find(|t| t.kind == TaskKind::Step && t.name.starts_with(name)).unwrap_or_else(|| {
        panic!("no step {name:?} in {:#?}", outcome.tasks.iter().map(|t| &t.name).collect::<Vec<_>>())
    })
}

fn children<'a>(outcome: &'a Outcome, parent: &Task) -> Vec<&'a Task> {
    outcome.tasks.iter().filter(|t| t.parent_id.as_deref() == Some(&parent.id)).collect()
}

fn succeeded(outcome: &Outcome) {
    assert_eq!(outcome.run.status, RunStatus::Success, "{:?} {:#?}", outcome.run.error, outcome.tasks);
}

/// The ids of the runs whose database backups `repo` holds.
async fn metadata_runs(repo: &Repository) -> BTreeSet<String> {
    let points = repo.restore_points().await.unwrap();
    points
        .iter()
        .filter(|m| PoolMetadataInfo::of(m).is_some())
        .flat_map(|m| m.tags.iter().filter_map(|t| t.strip_prefix("run:")).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_metadata_runs_keep_the_newest_database_backups_of_their_schedule() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let job = metadata_job(); // schedule "daily" keeps the last 1

    let first = env.run(&job, Some("daily"), &sink).await;
    succeeded(&first);
    assert!(first.run.totals.bytes_read > 0 && first.run.totals.bytes_stored > 0, "{:?}", first.run.totals);
    let dump = step(&first, "pool database");
    assert_eq!(dump.status, TaskStatus::Success);
    assert_eq!(dump.bytes_read, first.run.totals.bytes_read);
    let pool_uuid = dump.subject.clone().expect("the pool's uuid");
    assert!(dump.reason.as_deref().is_some_and(|r| r.contains("restore point")), "{dump:?}");

    let manual = env.run(&job, None, &sink).await;
    succeeded(&manual);
    let second = env.run(&job, Some("daily"), &sink).await;
    succeeded(&second);
    let retention = step(&second, "retention of schedule daily");
    assert_eq!(retention.status, TaskStatus::Success, "{retention:?}");
    assert!(retention.reason.as_deref().is_some_and(|r| r.starts_with("1 restore points removed")), "{retention:?}");

    // The schedule's older backup went; the manual run's is not the schedule's to remove.
    let expected: BTreeSet<String> = [manual.run.id.clone(), second.run.id.clone()].into();
    let repo = env.store.repository();
    assert_eq!(metadata_runs(repo).await, expected);
    let points = repo.restore_points().await.unwrap();
    assert!(points.iter().all(|m| m.source.id == pool_uuid && m.tags.contains(&"job:job-1".to_owned())));
}

/// A run of the mirror job from the environment's repository to `target`.
async fn mirror_run(
    env: &Env,
    job: &Job,
    target: &Store,
    sink: &Arc<MemorySink>,
    cancel: CancellationToken,
) -> Outcome {
    let run = new_run(job, Some("daily"));
    sink.save_run(&run).await;
    let schedule = job.schedules.iter().find(|s| s.id == "daily");
    let repos = Repositories { source: env.store.repository(), target: target.repository() };
    xenvault_jobs::mirror::run(job, schedule, run, repos, sink.clone(), cancel).await
}

async fn disk_bytes(repo: &Repository, point: &Manifest) -> Vec<Vec<u8>> {
    let mut disks = Vec::new();
    for disk in &point.disks {
        let reader = DiskReader::new(repo, disk).await.unwrap();
        let mut bytes = vec![0u8; reader.size() as usize];
        reader.read_at(0, &mut bytes).await.unwrap();
        disks.push(bytes);
    }
    disks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_runs_send_what_the_target_lacks_and_keep_its_retention() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let backups = job(debian_web());
    succeeded(&env.run(&backups, None, &sink).await);
    for disk in &env.points_of_vm().await[0].disks {
        env.scribble(&disk.uuid, 7).await;
    }
    succeeded(&env.run(&backups, None, &sink).await);
    let points = env.points_of_vm().await;
    assert_eq!(points.len(), 2);
    let newest = points.iter().max_by_key(|m| m.time).unwrap();

    // Its own key: chunks are matched by content. "daily" keeps the last 1 on the target.
    let target = new_store(env.dir.path().join("offsite").to_str().unwrap(), &Default::default()).await;
    let mirror = mirror_job();
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let stopped = mirror_run(&env, &mirror, &target, &sink, cancelled).await;
    assert_eq!(stopped.run.status, RunStatus::Cancelled, "{:?}", stopped.run.error);

    let first = mirror_run(&env, &mirror, &target, &sink, CancellationToken::new()).await;
    succeeded(&first);
    assert!(first.run.totals.bytes_read > 0 && first.run.totals.bytes_stored > 0, "{:?}", first.run.totals);
    let copy = step(&first, "mirror to offsite");
    let reason = copy.reason.as_deref().unwrap_or_default();
    assert!(reason.starts_with("1 restore points copied, 0 already there, 1 not sent"), "{reason}");
    let after: Vec<String> = children(&first, copy).iter().map(|t| t.name.clone()).collect();
    assert!(after.iter().any(|n| n.starts_with("retention on the target")), "{after:?}");
    assert!(after.iter().any(|n| n.starts_with("verify on the target: 1 restore points")), "{after:?}");
    assert!(children(&first, copy).iter().all(|t| t.status == TaskStatus::Success), "{after:?}");

    let on_target = target.repository().restore_points().await.unwrap();
    assert_eq!(on_target.iter().map(|m| &m.id).collect::<Vec<_>>(), vec![&newest.id]);
    let source_bytes = disk_bytes(env.store.repository(), newest).await;
    assert!(disk_bytes(target.repository(), &on_target[0]).await == source_bytes, "the mirror restores other bytes");

    let again = mirror_run(&env, &mirror, &target, &sink, CancellationToken::new()).await;
    succeeded(&again);
    assert_eq!((again.run.totals.bytes_read, again.run.totals.bytes_stored), (0, 0), "nothing sent twice");
    let reason = step(&again, "mirror to offsite").reason.clone().unwrap_or_default();
    assert!(reason.starts_with("0 restore points copied, 1 already there"), "{reason}");

    // run_backup is not how a mirror runs: it says so instead of backing anything up.
    let wrong = env.run(&mirror, None, &sink).await;
    assert_eq!(wrong.run.status, RunStatus::Failed);
    assert!(wrong.run.error.as_deref().is_some_and(|e| e.contains("mirror::run")), "{:?}", wrong.run.error);
}

#[test]
fn definitions_a_kind_cannot_run_are_refused() {
    let parsed: Job = toml::from_str(
        "name = \"offsite\"\nkind = \"mirror\"\nrepository = \"local\"\nmirror = { target = \"s3\", latest = true }",
    )
    .unwrap();
    assert_eq!(parsed.check_kind(), Ok(()));
    assert!(parsed.mirror.as_ref().is_some_and(|m| m.latest && m.verify && m.source_job.is_none()));
    let parsed: Job = toml::from_str("name = \"db\"\nkind = \"pool-metadata\"\npool = \"prod\"").unwrap();
    assert_eq!((parsed.kind, parsed.check_kind()), (JobKind::PoolMetadata, Ok(())));

    let refused = |change: fn(&mut Job), expected: &str| {
        let mut job = mirror_job();
        change(&mut job);
        let error = job.check_kind().expect_err(expected);
        assert!(error.contains(expected), "{error}");
    };
    refused(|j| j.mirror = None, "needs `mirror`");
    refused(|j| j.mirror.as_mut().unwrap().target.clear(), "target repository");
    refused(|j| j.mirror.as_mut().unwrap().target = j.repository.clone(), "another repository");
    refused(|j| j.selection.smart = Some(SmartSelection::default()), "not by smart selection");
    refused(|j| j.settings.snapshot_only = Some(SnapshotOnly { keep: 1 }), "snapshot-only");
    refused(|j| j.kind = JobKind::Backup, "for mirror jobs only");
    refused(
        |j| {
            j.kind = JobKind::PoolMetadata;
            j.mirror = None;
        },
        "selects no VMs",
    );
}
