//! The job settings that change how a run reads, what it writes and what it does to the
//! VMs, against the in-process simulator and real repositories: the speed limit, offline
//! backups, snapshot-only jobs, the compression level and immutability (SeaweedFS's S3
//! with object lock).

mod common;
// The storage servers are the repository tests' own, shared rather than copied.
#[path = "../../repo/tests/common/mod.rs"]
mod storage;

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use common::{MemorySink, debian_web, env, job, new_store};
use tokio_util::sync::CancellationToken;
use xenvault_jobs::model::{RunStatus, Selection, SnapshotOnly, Task, TaskKind, TaskStatus};
use xenvault_jobs::snapshot_only;
use xenvault_xapi_wire::Value;

fn steps(tasks: &[Task]) -> Vec<String> {
    tasks.iter().filter(|t| t.kind == TaskKind::Step).map(|t| t.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speed_limit_holds_the_whole_run_back() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let mut job = job(debian_web());
    // Two 16 MiB disks read whole (a first, full backup) at 16 MiB/s: about two seconds.
    let limit = 16u64 << 20;
    job.settings.speed_limit_bytes_per_sec = Some(limit);
    let started = Instant::now();
    let outcome = env.run(&job, None, &sink).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(outcome.run.status, RunStatus::Success, "{:?}", outcome.tasks);
    let read = outcome.run.totals.bytes_read;
    assert!(read >= 32 << 20, "{read}");
    // Loose: the last piece read (2 MiB at most) may end the run before its time is paid.
    let floor = (read - (2 << 20)) as f64 / limit as f64;
    assert!(elapsed >= floor * 0.95, "{read} bytes in {elapsed:.2} s under {limit} bytes/s (at least {floor:.2} s)");

    job.settings.speed_limit_bytes_per_sec = Some(0);
    let refused = env.run(&job, None, &sink).await;
    assert_eq!(refused.run.status, RunStatus::Failed);
    assert!(refused.run.error.as_deref().unwrap().contains("speed limit"), "{:?}", refused.run.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backups_shut_down_back_up_and_start_again() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let mut job = job(Selection { vms: vec!["debian-web".into(), "win-fileserver".into()], smart: None });
    job.settings.offline = true;
    let outcome = env.run(&job, None, &sink).await;
    // win-fileserver has no guest tools: xapi refuses its clean shutdown, and it stays up.
    assert_eq!(outcome.run.status, RunStatus::Partial, "{:?}", outcome.tasks);
    assert_eq!(env.vm("debian-web").await.power_state, "Running");
    assert_eq!(env.vm("win-fileserver").await.power_state, "Running");

    let said = steps(&outcome.tasks);
    assert!(said.iter().any(|s| s.contains("shut down cleanly")), "{said:?}");
    assert!(said.iter().any(|s| s.contains("started again")), "{said:?}");
    let windows = outcome.tasks.iter().find(|t| t.kind == TaskKind::Vm && t.name == "win-fileserver").unwrap();
    assert_eq!(windows.status, TaskStatus::Failed);
    assert!(windows.errors[0].contains("clean shutdown failed") && windows.errors[0].contains("VM_LACKS_FEATURE"));

    // While its backup ran the VM was halted: the VM record stored with the restore point says so.
    let point = env.points_of_vm().await.pop().unwrap();
    let metadata = xenvault_types::metadata::VmMetadata::from_value(&point.metadata).unwrap().unwrap();
    assert_eq!(metadata.records.vm["power_state"], "Halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_leaves_a_halted_vm_halted() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let mut job = job(Selection { vms: vec!["debian-clone".into()], smart: None });
    job.settings.offline = true;
    assert_eq!(env.vm("debian-clone").await.power_state, "Halted");
    let outcome = env.run(&job, None, &sink).await;
    assert_eq!(outcome.run.status, RunStatus::Success, "{:?}", outcome.tasks);
    assert_eq!(env.vm("debian-clone").await.power_state, "Halted");
    let said = steps(&outcome.tasks);
    assert!(said.iter().any(|s| s.contains("halted already")), "{said:?}");
    assert!(!said.iter().any(|s| s.contains("started again")), "{said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_only_jobs_keep_rolling_snapshots_and_write_nothing() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let mut job = job(debian_web());
    job.settings.snapshot_only = Some(SnapshotOnly { keep: 2 });
    let vm = env.vm("debian-web").await;
    let mut taken = Vec::new();
    for _ in 0..4 {
        let outcome = env.run(&job, Some("daily"), &sink).await;
        assert_eq!(outcome.run.status, RunStatus::Success, "{:?}", outcome.tasks);
        assert_eq!((outcome.run.totals.vms_ok, outcome.run.totals.bytes_read), (1, 0));
        let task = outcome.tasks.iter().find(|t| t.kind == TaskKind::Vm).unwrap();
        let reason = task.reason.as_deref().unwrap();
        taken.push(reason.split_whitespace().nth(2).unwrap().to_owned());
    }
    let kept = snapshot_only::rolling_snapshots(&env.host, &vm, &job.id, "daily").await.unwrap();
    let kept: Vec<String> = kept.into_iter().map(|s| s.uuid).collect();
    assert_eq!(kept, [taken[3].clone(), taken[2].clone()], "the newest two, newest first");
    // The older ones are gone with their disks: the VM has no other snapshot.
    assert_eq!(env.vm("debian-web").await.snapshots.len(), 2);
    let vdis = env.host.call("VDI.get_all_records", vec![]).await.unwrap();
    let snapshot_vdis = vdis
        .as_struct()
        .unwrap()
        .values()
        .filter(|r| r.as_struct().unwrap().get("is_a_snapshot").and_then(Value::as_bool) == Some(true))
        .count();
    assert_eq!(snapshot_vdis, 4, "two snapshots of two disks");
    assert!(env.store.repository().restore_points().await.unwrap().is_empty());

    // Another schedule counts its own.
    env.run(&job, Some("weekly"), &sink).await;
    assert_eq!(env.vm("debian-web").await.snapshots.len(), 3);

    job.settings.snapshot_only = Some(SnapshotOnly { keep: 0 });
    let refused = env.run(&job, Some("daily"), &sink).await;
    assert_eq!(refused.run.status, RunStatus::Failed);
    assert!(refused.run.error.as_deref().unwrap().contains("keep = 0"), "{:?}", refused.run.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compression_level_changes_what_is_stored() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    // 4 MiB of text-like data: compressible, better at higher levels.
    let text: String = (0..150_000u64).map(|i| format!("record {i} value {} state ok\n", i * 7919 % 100_003)).collect();
    let data = &text.as_bytes()[..4 << 20];
    let vm = env.vm("debian-web").await;
    let (_, root) = env.host.disks(&vm).await.unwrap().into_iter().find(|(vbd, _)| vbd.userdevice == "0").unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let args = [root.uuid.as_str(), "0", &encoded].map(Value::from).to_vec();
    env.sim.call("sim.write", args).await.unwrap();

    let mut job = job(debian_web());
    let mut stored = Vec::new();
    for level in [1, 19] {
        // A repository each: the second would otherwise find every chunk stored already.
        let location = env.dir.path().join(format!("repo-level-{level}"));
        let store = new_store(location.to_str().unwrap(), &Default::default()).await;
        job.settings.compression_level = Some(level);
        let outcome = env.run_into(Some(&store), &job, None, &sink, CancellationToken::new()).await;
        assert_eq!(outcome.run.status, RunStatus::Success, "{:?}", outcome.tasks);
        stored.push(outcome.run.totals.bytes_stored);
    }
    assert!(stored[1] < stored[0], "level 19 stores {} bytes, level 1 {}", stored[1], stored[0]);

    job.settings.compression_level = Some(30);
    let refused = env.run(&job, None, &sink).await;
    assert_eq!(refused.run.status, RunStatus::Failed);
    assert!(refused.run.error.as_deref().unwrap().contains("compression level 30"), "{:?}", refused.run.error);
    assert!(env.points_of_vm().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutability_locks_new_restore_points_and_needs_object_lock() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let mut job = job(debian_web());
    job.settings.immutability_days = Some(1);

    // A local directory has no object lock: refused before any snapshot.
    let refused = env.run(&job, None, &sink).await;
    assert_eq!(refused.run.status, RunStatus::Failed);
    assert!(refused.run.error.as_deref().unwrap().contains("immutable for 1 days"), "{:?}", refused.run.error);
    assert!(env.vm("debian-web").await.snapshots.is_empty());

    let server = storage::s3();
    let options = server.options();
    let endpoint = options.s3_endpoint.clone().unwrap();
    let url = format!("s3://{}/repo", storage::object_lock::object_lock_bucket(&endpoint));
    let store = new_store(&url, &options).await;
    let outcome = env.run_into(Some(&store), &job, None, &sink, CancellationToken::new()).await;
    assert_eq!(outcome.run.status, RunStatus::Success, "{:?}", outcome.tasks);
    assert!(steps(&outcome.tasks).iter().any(|s| s.starts_with("restore point locked until")), "{:?}", outcome.tasks);
    let point = store.repository().restore_points().await.unwrap().pop().unwrap();
    let retention = store.repository().backend().retention(&format!("snapshots/{}", point.id)).await.unwrap();
    let retention = retention.expect("the new restore point's manifest is locked");
    assert!(retention.until > chrono::Utc::now() + chrono::Duration::hours(23), "{retention:?}");
}
