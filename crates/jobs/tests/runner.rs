//! Runs of jobs against the in-process simulator and a local repository: the task tree,
//! live progress, selection resolved at run time, retention per schedule applied after a
//! successful run only, and cancellation.

mod common;

use std::sync::Arc;

use common::{MemorySink, debian_web, env, job};
use tokio_util::sync::CancellationToken;
use xenvault_jobs::model::{PowerState, RunStatus, Selection, SmartSelection, Task, TaskKind, TaskStatus};
use xenvault_types::progress::Event;

#[tokio::test]
async fn a_run_records_its_task_tree_and_applies_its_schedules_retention() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let job = job(debian_web());

    let first = env.run(&job, Some("daily"), &sink).await;
    assert_eq!(first.run.status, RunStatus::Success, "{:?}", first.tasks);
    assert_eq!((first.run.totals.vms, first.run.totals.vms_ok), (1, 1));
    // The tree the catalog got: run → VM → its two disks, plus the retention step.
    let tasks = sink.tasks_of(&first.run.id);
    let root = tasks.iter().find(|t| t.kind == TaskKind::Run).unwrap();
    assert_eq!(root.status, TaskStatus::Success);
    let vm = tasks.iter().find(|t| t.kind == TaskKind::Vm).unwrap();
    assert_eq!(
        (vm.name.as_str(), vm.parent_id.as_deref(), vm.status),
        ("debian-web", Some(&*root.id), TaskStatus::Success)
    );
    let disks: Vec<&Task> = tasks.iter().filter(|t| t.kind == TaskKind::Disk).collect();
    assert_eq!(disks.len(), 2);
    assert!(disks.iter().all(|d| d.parent_id.as_deref() == Some(&*vm.id) && d.strategy.is_some()));
    for (seed, disk) in disks.iter().enumerate() {
        env.scribble(disk.subject.as_deref().unwrap(), seed as u64).await;
    }
    assert!(tasks.iter().any(|t| t.kind == TaskKind::Step && t.name.contains("retention")));
    assert_eq!(sink.runs.lock().unwrap()[&first.run.id].status, RunStatus::Success);

    // A second daily run (over changed disks): "last 1" leaves only its own restore point.
    let second = env.run(&job, Some("daily"), &sink).await;
    assert_eq!(second.run.status, RunStatus::Success);
    assert!(second.run.totals.bytes_read > 0 && second.run.totals.bytes_stored > 0, "{:?}", second.run.totals);
    assert!(sink.events.lock().unwrap().iter().any(|e| matches!(e, Event::Progressed { done, .. } if *done > 0)));
    let points = env.points_of_vm().await;
    assert_eq!(points.len(), 1);
    let step = sink.tasks_of(&second.run.id).into_iter().find(|t| t.kind == TaskKind::Step).unwrap();
    assert_eq!(step.status, TaskStatus::Success);
    assert!(step.reason.as_deref().unwrap().starts_with("1 restore points removed"), "{step:?}");

    // Weekly runs count only their own points: the daily one stays.
    for _ in 0..3 {
        assert_eq!(env.run(&job, Some("weekly"), &sink).await.run.status, RunStatus::Success);
    }
    let ids: Vec<String> = env.points_of_vm().await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 3, "one daily and the two newest weekly points: {ids:?}");
    assert!(ids.contains(&points[0].id));

    // A manual run has no schedule, so no retention.
    let manual = env.run(&job, None, &sink).await;
    assert_eq!(manual.run.status, RunStatus::Success);
    assert_eq!(env.points_of_vm().await.len(), 4);
    assert!(manual.tasks.iter().all(|t| t.kind != TaskKind::Step));
}

#[tokio::test]
async fn retention_waits_for_a_fully_successful_run() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    // Two VMs; the pre command fails for the Windows one.
    let mut job = job(Selection { vms: vec!["debian-web".into(), "win-fileserver".into()], smart: None });
    job.settings.pre_command = Some("test \"$XENVAULT_VM_NAME\" != win-fileserver".into());
    job.settings.retries = 1;
    job.settings.retry_backoff_secs = 0;

    for _ in 0..2 {
        let outcome = env.run(&job, Some("daily"), &sink).await;
        assert_eq!(outcome.run.status, RunStatus::Partial);
        assert_eq!((outcome.run.totals.vms_ok, outcome.run.totals.vms_failed), (1, 1));
        let failed = outcome.tasks.iter().find(|t| t.kind == TaskKind::Vm && t.status == TaskStatus::Failed).unwrap();
        assert_eq!(failed.name, "win-fileserver");
        assert!(!failed.errors.is_empty());
        // The retry is said.
        assert!(failed.warnings.iter().any(|w| w.starts_with("try 1 failed")), "{failed:?}");
        assert!(outcome.tasks.iter().all(|t| t.kind != TaskKind::Step));
    }
    // "last 1" was not applied: both points of debian-web are there.
    assert_eq!(env.points_of_vm().await.len(), 2);
}

#[tokio::test]
async fn a_cancelled_run_commits_nothing_and_a_bad_selection_fails_the_run() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let outcome = env.run_cancelled_by(&job(debian_web()), Some("daily"), &sink, cancel).await;
    assert_eq!(outcome.run.status, RunStatus::Cancelled);
    assert!(env.points_of_vm().await.is_empty());

    let missing = job(Selection { vms: vec!["no-such-vm".into()], smart: None });
    let outcome = env.run(&missing, Some("daily"), &sink).await;
    assert_eq!(outcome.run.status, RunStatus::Failed);
    assert!(outcome.run.error.as_deref().unwrap().contains("no-such-vm"), "{:?}", outcome.run.error);
    assert_eq!(sink.runs.lock().unwrap()[&outcome.run.id].status, RunStatus::Failed);
}

#[tokio::test]
async fn smart_selection_is_resolved_against_the_pool_as_it_is() {
    let env = env().await;
    let names = |vms: Vec<xenvault_pool::records::Vm>| vms.into_iter().map(|v| v.name_label).collect::<Vec<_>>();
    let smart = |s: SmartSelection| Selection { vms: Vec::new(), smart: Some(s) };

    let running = smart(SmartSelection { power_states: vec![PowerState::Running], ..Default::default() });
    let found = names(xenvault_jobs::selection::resolve(&env.host, &running).await.unwrap());
    assert_eq!(found, ["debian-web", "win-fileserver"]);

    let tagged = smart(SmartSelection { tags: vec!["demo".into()], ..Default::default() });
    assert_eq!(names(xenvault_jobs::selection::resolve(&env.host, &tagged).await.unwrap()), ["debian-web"]);

    let excluded = smart(SmartSelection {
        power_states: vec![PowerState::Running],
        exclude_tags: vec!["demo".into()],
        ..Default::default()
    });
    assert_eq!(names(xenvault_jobs::selection::resolve(&env.host, &excluded).await.unwrap()), ["win-fileserver"]);

    let halted =
        smart(SmartSelection { power_states: vec![PowerState::Halted], exclude_vms: vec![], ..Default::default() });
    let found = names(xenvault_jobs::selection::resolve(&env.host, &halted).await.unwrap());
    assert!(!found.contains(&"debian-web".to_owned()), "{found:?}");
}
