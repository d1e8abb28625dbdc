//! The catalog's behaviour, each test run on SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::TestCatalog;
use xenvault_catalog::{
    AuditQuery, ConnectionKind, Error, LogLevel, RestorePointEntry, RestorePointQuery, Role, RunQuery,
};
use xenvault_jobs::model::{
    Job, Level, Run, RunStatus, RunTotals, Schedule, Sequence, Task, TaskKind, TaskStatus, Trigger,
};

both_backends!(
    schema_is_migrated_once_and_a_newer_one_is_refused,
    users_log_in_with_their_password_only,
    tokens_are_stored_as_hashes_and_expire,
    sessions_carry_the_users_role_and_end,
    secrets_are_sealed_and_never_listed,
    a_connection_used_by_a_job_is_not_deleted,
    jobs_are_created_updated_and_deleted,
    a_run_stores_its_task_tree_and_logs,
    one_run_of_a_job_at_a_time,
    runs_left_running_become_interrupted,
    runs_are_listed_with_filters_and_pages,
    vm_last_successes_and_last_fired,
    restore_points_are_indexed_per_vm_and_job,
    the_audit_log_pages_back,
    settings_keep_their_secret_apart,
    two_catalogs_on_one_database_write_at_once,
);

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes)
}

fn job(name: &str) -> Job {
    let mut job: Job = serde_json::from_value(serde_json::json!({
        "name": name,
        "pool": "prod",
        "repository": "main",
        "schedules": [
            {"cron": "*/5 * * * *", "timezone": "Europe/Berlin"},
            {"name": "weekly full", "cron": "0 3 * * 0", "level": "full"}
        ]
    }))
    .unwrap();
    job.selection.vms = vec!["web01".into()];
    job
}

fn run(job_id: &str, status: RunStatus, queued_at: DateTime<Utc>) -> Run {
    Run {
        id: String::new(),
        job_id: job_id.to_string(),
        schedule_id: None,
        parent_run_id: None,
        trigger: Trigger::Manual,
        status,
        level: Some(Level::Inc),
        scheduled_for: None,
        queued_at,
        started_at: Some(queued_at),
        finished_at: status.is_finished().then_some(queued_at + Duration::seconds(30)),
        totals: RunTotals::default(),
        error: None,
    }
}

fn vm_task(run: &Run, n: usize, vm: &str, status: TaskStatus, finished_at: DateTime<Utc>) -> Task {
    let mut task = Task::started(format!("{}-vm{n}", run.id), &run.id, None, TaskKind::Vm, vm);
    task.subject = Some(format!("uuid-{vm}"));
    task.status = status;
    task.started_at = Some(finished_at - Duration::seconds(10));
    task.finished_at = Some(finished_at);
    task
}

fn is_conflict<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(result, Err(Error::Conflict(_)))
}

async fn schema_is_migrated_once_and_a_newer_one_is_refused(c: TestCatalog) {
    assert_eq!(
        c.raw("SELECT version FROM schema_version").await,
        vec![vec![xenvault_catalog::SCHEMA_VERSION.to_string()]]
    );
    c.create_user("alice", "correct horse", Role::Admin).await.unwrap();
    // Opening again keeps the data and the version.
    let again = c.reopen().await.unwrap();
    assert_eq!(again.users().await.unwrap().len(), 1);
    assert_eq!(c.raw("SELECT COUNT(*) FROM schema_version").await, vec![vec!["1".to_string()]]);
    c.raw("UPDATE schema_version SET version = 999").await;
    match c.reopen().await {
        Err(Error::SchemaTooNew { found: 999, .. }) => {}
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

async fn users_log_in_with_their_password_only(c: TestCatalog) {
    let alice = c.create_user("alice", "correct horse", Role::Operator).await.unwrap();
    assert_eq!(alice.role, Role::Operator);
    assert!(is_conflict(c.create_user("alice", "another password", Role::Admin).await));
    assert!(matches!(c.create_user("bob", "short", Role::Admin).await, Err(Error::Invalid(_))));
    assert!(matches!(c.create_user("", "long enough", Role::Admin).await, Err(Error::Invalid(_))));

    assert_eq!(c.check_password("alice", "correct horse").await.unwrap().map(|u| u.name), Some("alice".into()));
    assert!(c.check_password("alice", "wrong horse!").await.unwrap().is_none());
    assert!(c.check_password("nobody", "correct horse").await.unwrap().is_none());
    // Stored as argon2id, not as the password.
    let stored = c.raw("SELECT password_hash FROM users").await;
    assert!(stored[0][0].starts_with("$argon2id$"), "{stored:?}");
    assert!(!stored[0][0].contains("correct horse"));

    c.set_password("alice", "battery staple").await.unwrap();
    assert!(c.check_password("alice", "correct horse").await.unwrap().is_none());
    assert!(c.check_password("alice", "battery staple").await.unwrap().is_some());
    c.set_role("alice", Role::ReadOnly).await.unwrap();
    assert_eq!(c.user("alice").await.unwrap().role, Role::ReadOnly);
    assert!(Role::Admin.includes(Role::Operator) && !Role::Operator.includes(Role::Admin));

    c.delete_user("alice").await.unwrap();
    assert!(matches!(c.user("alice").await, Err(Error::NotFound { .. })));
    assert!(matches!(c.delete_user("alice").await, Err(Error::NotFound { .. })));
}

async fn tokens_are_stored_as_hashes_and_expire(c: TestCatalog) {
    let new = c.create_token("ci", Role::Operator, "alice", None).await.unwrap();
    assert!(new.secret.starts_with(&new.token.prefix) && new.secret.len() > 40, "{}", new.secret);
    let found = c.authenticate_token(&new.secret).await.unwrap().expect("token accepted");
    assert_eq!((found.id.as_str(), found.role), (new.token.id.as_str(), Role::Operator));
    assert!(found.last_used_at.is_some());
    assert!(c.authenticate_token("xvt_not-a-token").await.unwrap().is_none());
    let stored = c.raw("SELECT id, name, prefix, hash, role FROM api_tokens").await;
    assert!(stored.iter().flatten().all(|v| !v.contains(&new.secret)), "the token itself is stored: {stored:?}");
    // Listing shows the prefix, never the secret.
    let listed = serde_json::to_string(&c.tokens().await.unwrap()).unwrap();
    assert!(listed.contains(&new.token.prefix) && !listed.contains(&new.secret));

    let expired = c.create_token("old", Role::Admin, "alice", Some(Utc::now() - Duration::minutes(1))).await.unwrap();
    assert!(c.authenticate_token(&expired.secret).await.unwrap().is_none());

    c.delete_token(&new.token.id).await.unwrap();
    assert!(c.authenticate_token(&new.secret).await.unwrap().is_none());
    assert!(matches!(c.delete_token(&new.token.id).await, Err(Error::NotFound { .. })));
}

async fn sessions_carry_the_users_role_and_end(c: TestCatalog) {
    c.create_user("alice", "correct horse", Role::Operator).await.unwrap();
    let new = c.create_session("alice", Duration::hours(1)).await.unwrap();
    let session = c.session(&new.id).await.unwrap().expect("live session");
    assert_eq!((session.user.as_str(), session.role), ("alice", Role::Operator));
    assert_eq!(session.csrf_token, new.session.csrf_token);
    assert!(c.raw("SELECT hash FROM sessions").await.iter().flatten().all(|h| h != &new.id));
    // A role change applies to live sessions.
    c.set_role("alice", Role::Admin).await.unwrap();
    assert_eq!(c.session(&new.id).await.unwrap().unwrap().role, Role::Admin);

    let short = c.create_session("alice", Duration::milliseconds(-1)).await.unwrap();
    assert!(c.session(&short.id).await.unwrap().is_none(), "an expired session is refused");

    c.delete_session(&new.id).await.unwrap();
    assert!(c.session(&new.id).await.unwrap().is_none());
    let other = c.create_session("alice", Duration::hours(1)).await.unwrap();
    c.set_password("alice", "battery staple").await.unwrap();
    assert!(c.session(&other.id).await.unwrap().is_none(), "a new password ends the sessions");
    assert!(matches!(c.create_session("nobody", Duration::hours(1)).await, Err(Error::NotFound { .. })));
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct PoolSettings {
    url: String,
    user: String,
}

async fn secrets_are_sealed_and_never_listed(c: TestCatalog) {
    let settings = PoolSettings { url: "https://xen1.example".into(), user: "root".into() };
    c.add_connection(ConnectionKind::Pool, "prod", &settings, Some("pool-password-1")).await.unwrap();
    c.add_connection(ConnectionKind::Repository, "main", &"/backup/xen", Some("repo-passphrase-1")).await.unwrap();
    assert!(is_conflict(c.add_connection(ConnectionKind::Pool, "prod", &settings, None).await));

    let pools = c.connections::<PoolSettings>(ConnectionKind::Pool).await.unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].settings, settings);
    assert!(pools[0].has_secret);
    assert!(!serde_json::to_string(&pools).unwrap().contains("pool-password-1"));
    let dump = format!("{:?}", c.raw("SELECT * FROM pools").await)
        + &format!("{:?}", c.raw("SELECT * FROM repositories").await);
    assert!(!dump.contains("pool-password-1") && !dump.contains("repo-passphrase-1"), "{dump}");

    assert_eq!(c.connection_secret(ConnectionKind::Pool, "prod").await.unwrap().as_deref(), Some("pool-password-1"));
    assert_eq!(
        c.connection_secret(ConnectionKind::Repository, "main").await.unwrap().as_deref(),
        Some("repo-passphrase-1")
    );
    // An update without a secret keeps it; with one replaces it.
    let moved = PoolSettings { url: "https://xen2.example".into(), user: "root".into() };
    c.update_connection(ConnectionKind::Pool, "prod", &moved, None).await.unwrap();
    assert_eq!(c.connection::<PoolSettings>(ConnectionKind::Pool, "prod").await.unwrap().settings, moved);
    assert_eq!(c.connection_secret(ConnectionKind::Pool, "prod").await.unwrap().as_deref(), Some("pool-password-1"));
    c.update_connection(ConnectionKind::Pool, "prod", &moved, Some("pool-password-2")).await.unwrap();
    assert_eq!(c.connection_secret(ConnectionKind::Pool, "prod").await.unwrap().as_deref(), Some("pool-password-2"));
    assert!(matches!(
        c.update_connection(ConnectionKind::Pool, "nope", &moved, None).await,
        Err(Error::NotFound { .. })
    ));

    // Another data directory (another key) cannot open them.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = xenvault_catalog::Catalog::open(
        other_dir.path(),
        c.database().as_deref().or(Some(c.data_dir.path().join(xenvault_catalog::SQLITE_FILE).to_str().unwrap())),
    )
    .await
    .unwrap();
    assert!(matches!(stranger.connection_secret(ConnectionKind::Pool, "prod").await, Err(Error::Corrupt(_))));
}

async fn a_connection_used_by_a_job_is_not_deleted(c: TestCatalog) {
    c.add_connection(ConnectionKind::Pool, "prod", &"x", Some("pw")).await.unwrap();
    let job = c.create_job(job("nightly")).await.unwrap();
    match c.delete_connection(ConnectionKind::Pool, "prod").await {
        Err(Error::Conflict(message)) => assert!(message.contains("nightly"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    c.delete_job(&job.id).await.unwrap();
    c.delete_connection(ConnectionKind::Pool, "prod").await.unwrap();
    assert!(c.connections::<String>(ConnectionKind::Pool).await.unwrap().is_empty());
    assert!(matches!(c.delete_connection(ConnectionKind::Pool, "prod").await, Err(Error::NotFound { .. })));
}

async fn jobs_are_created_updated_and_deleted(c: TestCatalog) {
    let created = c.create_job(job("nightly")).await.unwrap();
    assert!(!created.id.is_empty());
    assert!(created.schedules.iter().all(|s| !s.id.is_empty()));
    assert_ne!(created.schedules[0].id, created.schedules[1].id);
    assert_eq!(c.job(&created.id).await.unwrap(), created);
    assert_eq!(c.job_by_name("nightly").await.unwrap(), created);
    assert!(is_conflict(c.create_job(job("nightly")).await), "a name is unique");

    let mut changed = created.clone();
    changed.name = "nightly-2".into();
    changed.schedules.push(Schedule {
        id: String::new(),
        name: "monthly".into(),
        cron: "0 4 1 * *".into(),
        timezone: "UTC".into(),
        enabled: true,
        level: Level::Full,
        retention: Default::default(),
    });
    let stored = c.update_job(changed).await.unwrap();
    assert_eq!(stored.schedules[0].id, created.schedules[0].id, "schedule ids are kept");
    assert!(!stored.schedules[2].id.is_empty());
    assert_eq!(c.job(&created.id).await.unwrap().name, "nightly-2");
    let mut twice = stored.clone();
    twice.schedules[1].id = twice.schedules[0].id.clone();
    assert!(matches!(c.update_job(twice).await, Err(Error::Invalid(_))));

    assert!(!c.set_job_enabled(&created.id, false).await.unwrap().enabled);
    assert!(!c.job(&created.id).await.unwrap().enabled);

    let other = c.create_job(job("weekly")).await.unwrap();
    let mut renamed = other.clone();
    renamed.name = "nightly-2".into();
    assert!(is_conflict(c.update_job(renamed).await));

    let mut sequence = job("sequence");
    sequence.sequence = Some(Sequence { jobs: vec![other.id.clone()], on_failure: Default::default() });
    c.create_job(sequence).await.unwrap();
    assert!(is_conflict(c.delete_job(&other.id).await), "a sequence member stays");
    assert_eq!(
        c.jobs().await.unwrap().iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["nightly-2", "sequence", "weekly"]
    );
    c.delete_job(&created.id).await.unwrap();
    assert!(matches!(c.job(&created.id).await, Err(Error::NotFound { .. })));
}

async fn a_run_stores_its_task_tree_and_logs(c: TestCatalog) {
    let mut run = c.create_run(run("job-1", RunStatus::Running, at(0))).await.unwrap();
    assert!(!run.id.is_empty());
    let root = Task::started(format!("{}-root", run.id), &run.id, None, TaskKind::Run, "nightly");
    let mut vm = Task::started(format!("{}-vm", run.id), &run.id, Some(&root.id), TaskKind::Vm, "web01");
    vm.subject = Some("uuid-web01".into());
    let mut disk = Task::started(format!("{}-disk", run.id), &run.id, Some(&vm.id), TaskKind::Disk, "0 root");
    let step = Task::started(format!("{}-snap", run.id), &run.id, Some(&vm.id), TaskKind::Step, "snapshot");
    for task in [&root, &vm, &disk, &step] {
        c.save_task(task).await.unwrap();
    }
    // Progress and the end of the disk are updates of the same task.
    disk.bytes_total = Some(10 << 30);
    disk.bytes_read = 4 << 30;
    c.save_task(&disk).await.unwrap();
    disk.bytes_read = 10 << 30;
    disk.bytes_stored = 1 << 30;
    disk.strategy = Some("cbt-nbd".into());
    disk.reason = Some("CBT enabled and the previous point is intact".into());
    disk.warnings = vec!["slow NBD".into()];
    disk.status = TaskStatus::Success;
    disk.finished_at = Some(Utc::now());
    c.save_task(&disk).await.unwrap();

    let first = c.append_log(&run.id, Some(&vm.id), LogLevel::Info, "snapshot taken").await.unwrap();
    let second = c.append_log(&run.id, None, LogLevel::Warning, "slow NBD").await.unwrap();
    assert!(second > first);

    run.status = RunStatus::Success;
    run.finished_at = Some(at(5));
    run.totals = RunTotals { vms: 1, vms_ok: 1, vms_failed: 0, bytes_read: 10 << 30, bytes_stored: 1 << 30 };
    c.update_run(&run).await.unwrap();

    let detail = c.run(&run.id).await.unwrap();
    assert_eq!(detail.run, run);
    assert_eq!(
        detail.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["nightly", "web01", "0 root", "snapshot"]
    );
    let stored_disk = &detail.tasks[2];
    assert_eq!(stored_disk.parent_id.as_deref(), Some(vm.id.as_str()));
    assert_eq!(
        (stored_disk.bytes_read, stored_disk.bytes_stored, stored_disk.strategy.as_deref()),
        (10 << 30, 1 << 30, Some("cbt-nbd"))
    );
    assert_eq!(stored_disk.warnings, ["slow NBD"]);
    assert_eq!(stored_disk.status, TaskStatus::Success);

    let logs = c.run_logs(&run.id, None, 100).await.unwrap();
    assert_eq!(logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["snapshot taken", "slow NBD"]);
    assert_eq!(logs[0].task_id.as_deref(), Some(vm.id.as_str()));
    let after = c.run_logs(&run.id, Some(first), 100).await.unwrap();
    assert_eq!(after.iter().map(|l| l.id).collect::<Vec<_>>(), [second]);

    assert!(matches!(c.run("no-such-run").await, Err(Error::NotFound { .. })));
    let mut ghost = run.clone();
    ghost.id = "no-such-run".into();
    assert!(matches!(c.update_run(&ghost).await, Err(Error::NotFound { .. })));
}

async fn one_run_of_a_job_at_a_time(c: TestCatalog) {
    let mut first = c.create_run(run("job-1", RunStatus::Queued, at(0))).await.unwrap();
    assert!(is_conflict(c.create_run(run("job-1", RunStatus::Running, at(1))).await));
    // Another job runs meanwhile.
    c.create_run(run("job-2", RunStatus::Running, at(1))).await.unwrap();
    first.status = RunStatus::Failed;
    c.update_run(&first).await.unwrap();
    c.create_run(run("job-1", RunStatus::Running, at(2))).await.unwrap();
}

async fn runs_left_running_become_interrupted(c: TestCatalog) {
    let running = c.create_run(run("job-1", RunStatus::Running, at(0))).await.unwrap();
    let queued = c.create_run(run("job-2", RunStatus::Queued, at(1))).await.unwrap();
    let done = c.create_run(run("job-3", RunStatus::Success, at(2))).await.unwrap();
    let live = Task::started(format!("{}-vm", running.id), &running.id, None, TaskKind::Vm, "web01");
    let finished = vm_task(&running, 2, "db01", TaskStatus::Success, at(0));
    c.save_task(&live).await.unwrap();
    c.save_task(&finished).await.unwrap();

    // What a restarted server does first.
    let restarted = c.reopen().await.unwrap();
    let interrupted = restarted.interrupt_unfinished_runs().await.unwrap();
    assert_eq!(
        interrupted.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [running.id.as_str(), queued.id.as_str()]
    );
    assert!(interrupted.iter().all(|r| r.status == RunStatus::Interrupted && r.finished_at.is_some()));
    let detail = restarted.run(&running.id).await.unwrap();
    assert_eq!(detail.run.status, RunStatus::Interrupted);
    let statuses: Vec<TaskStatus> = detail.tasks.iter().map(|t| t.status).collect();
    assert_eq!(statuses, [TaskStatus::Interrupted, TaskStatus::Success]);
    assert_eq!(restarted.run(&done.id).await.unwrap().run.status, RunStatus::Success);
    assert!(restarted.interrupt_unfinished_runs().await.unwrap().is_empty());
    // The job may run again.
    restarted.create_run(run("job-1", RunStatus::Running, at(3))).await.unwrap();
}

async fn runs_are_listed_with_filters_and_pages(c: TestCatalog) {
    // 30 runs: jobs a/b alternating, every third failed, VMs web01 (all) and db01 (job b).
    let mut ids = Vec::new();
    for i in 0..30 {
        let job_id = if i % 2 == 0 { "a" } else { "b" };
        let status = if i % 3 == 0 { RunStatus::Failed } else { RunStatus::Success };
        let r = c.create_run(run(job_id, status, at(i))).await.unwrap();
        c.save_task(&vm_task(&r, 0, "web01", TaskStatus::Success, at(i))).await.unwrap();
        if job_id == "b" {
            c.save_task(&vm_task(&r, 1, "db01", TaskStatus::Success, at(i))).await.unwrap();
        }
        ids.push(r.id);
    }
    let page = c.runs(&RunQuery { limit: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(page.total, 30);
    assert_eq!(
        page.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        ids[20..].iter().rev().cloned().collect::<Vec<_>>()
    );
    let last = c.runs(&RunQuery { limit: Some(10), offset: Some(25), ..Default::default() }).await.unwrap();
    assert_eq!(last.runs.len(), 5);
    assert_eq!(last.runs[4].id, ids[0]);

    let by_job = c.runs(&RunQuery { job_id: Some("a".into()), limit: Some(1000), ..Default::default() }).await.unwrap();
    assert_eq!(by_job.total, 15);
    assert!(by_job.runs.iter().all(|r| r.job_id == "a"));
    let failed = c.runs(&RunQuery { status: Some(RunStatus::Failed), ..Default::default() }).await.unwrap();
    assert_eq!(failed.total, 10);
    for vm in ["db01", "uuid-db01"] {
        let by_vm = c.runs(&RunQuery { vm: Some(vm.into()), ..Default::default() }).await.unwrap();
        assert_eq!(by_vm.total, 15, "{vm}");
        assert!(by_vm.runs.iter().all(|r| r.job_id == "b"));
    }
    let window = RunQuery {
        job_id: Some("b".into()),
        status: Some(RunStatus::Success),
        since: Some(at(10)),
        until: Some(at(20)),
        ..Default::default()
    };
    let found = c.runs(&window).await.unwrap();
    // Odd i in 10..20 not divisible by 3: 11, 13, 17, 19.
    assert_eq!(found.runs.iter().map(|r| r.queued_at).collect::<Vec<_>>(), [at(19), at(17), at(13), at(11)]);
    assert_eq!(found.total, 4);
}

async fn vm_last_successes_and_last_fired(c: TestCatalog) {
    let job = c.create_job(job("nightly")).await.unwrap();
    let schedule = job.schedules[0].id.clone();
    for (i, status) in [TaskStatus::Success, TaskStatus::Success, TaskStatus::Failed].into_iter().enumerate() {
        let minutes = i as i64 * 5;
        let mut r = run(&job.id, RunStatus::Success, at(minutes));
        r.schedule_id = Some(schedule.clone());
        r.trigger = Trigger::Schedule;
        r.scheduled_for = Some(at(minutes));
        let r = c.create_run(r).await.unwrap();
        c.save_task(&vm_task(&r, 0, "web01", status, at(minutes + 1))).await.unwrap();
    }
    let manual = c.create_run(run(&job.id, RunStatus::Success, at(100))).await.unwrap();
    c.save_task(&vm_task(&manual, 0, "db01", TaskStatus::Success, at(101))).await.unwrap();

    // A success reported late for an older run does not replace the newer one.
    let late = c.create_run(run(&job.id, RunStatus::Success, at(2))).await.unwrap();
    c.save_task(&vm_task(&late, 0, "web01", TaskStatus::Success, at(3))).await.unwrap();

    let last = c.vm_last_successes(None).await.unwrap();
    let summary: Vec<(&str, DateTime<Utc>)> = last.iter().map(|s| (s.vm_name.as_str(), s.finished_at)).collect();
    // web01's newest try failed: its last success is the second run.
    assert_eq!(summary, [("db01", at(101)), ("web01", at(6))]);
    assert_eq!(last[1].vm_uuid, "uuid-web01");
    assert!(c.vm_last_successes(Some("other-job")).await.unwrap().is_empty());

    let fired = c.last_fired().await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[&(job.id.clone(), schedule)], at(10));
}

fn point(repository: &str, id: &str, vm: &str, job: Option<&str>, minutes: i64) -> RestorePointEntry {
    RestorePointEntry {
        repository: repository.into(),
        point_id: id.into(),
        vm_uuid: format!("uuid-{vm}"),
        vm_name: vm.into(),
        job_id: job.map(str::to_string),
        run_id: None,
        schedule_id: None,
        created_at: at(minutes),
        size: 20 << 30,
    }
}

async fn restore_points_are_indexed_per_vm_and_job(c: TestCatalog) {
    for entry in [
        point("main", "p1", "web01", Some("j1"), 1),
        point("main", "p2", "web01", Some("j1"), 2),
        point("main", "p3", "db01", Some("j2"), 3),
        point("offsite", "p1", "web01", None, 4),
    ] {
        c.index_restore_point(&entry).await.unwrap();
    }
    // Indexing again updates, not duplicates.
    let mut renamed = point("main", "p2", "web01", Some("j1"), 2);
    renamed.size = 21 << 30;
    c.index_restore_point(&renamed).await.unwrap();

    let ids = |v: Vec<RestorePointEntry>| {
        v.into_iter().map(|e| format!("{}/{}", e.repository, e.point_id)).collect::<Vec<_>>()
    };
    let web = c.restore_points(&RestorePointQuery { vm: Some("web01".into()), ..Default::default() }).await.unwrap();
    assert_eq!(web[1].size, 21 << 30);
    assert_eq!(ids(web), ["offsite/p1", "main/p2", "main/p1"]);
    let by_uuid = c.restore_points(&RestorePointQuery { vm: Some("uuid-db01".into()), ..Default::default() }).await;
    assert_eq!(ids(by_uuid.unwrap()), ["main/p3"]);
    let by_job = c.restore_points(&RestorePointQuery { job_id: Some("j1".into()), ..Default::default() }).await;
    assert_eq!(ids(by_job.unwrap()), ["main/p2", "main/p1"]);
    let window = RestorePointQuery { since: Some(at(2)), until: Some(at(4)), ..Default::default() };
    assert_eq!(ids(c.restore_points(&window).await.unwrap()), ["main/p3", "main/p2"]);
    // The newest per VM across repositories, keyed by uuid (a VM named like another VM's
    // uuid cannot take its place).
    c.index_restore_point(&point("main", "p4", "uuid-db01", None, 5)).await.unwrap();
    let newest = c.newest_restore_points().await.unwrap();
    let newest: BTreeMap<&str, String> =
        newest.iter().map(|(vm, p)| (vm.as_str(), format!("{}/{}", p.repository, p.point_id))).collect();
    assert_eq!(
        newest,
        BTreeMap::from([
            ("uuid-db01", "main/p3".into()),
            ("uuid-uuid-db01", "main/p4".into()),
            ("uuid-web01", "offsite/p1".into())
        ])
    );
    c.unindex_restore_points("main", &["p4".into()]).await.unwrap();

    c.unindex_restore_points("main", &["p1".into()]).await.unwrap();
    let main = RestorePointQuery { repository: Some("main".into()), ..Default::default() };
    assert_eq!(ids(c.restore_points(&main).await.unwrap()), ["main/p3", "main/p2"]);
    // A sync makes the index what the repository lists.
    c.sync_restore_points("main", &[point("main", "p9", "app01", None, 9)]).await.unwrap();
    assert_eq!(ids(c.restore_points(&main).await.unwrap()), ["main/p9"]);
    assert_eq!(ids(c.restore_points(&RestorePointQuery::default()).await.unwrap()), ["main/p9", "offsite/p1"]);
}

async fn the_audit_log_pages_back(c: TestCatalog) {
    for i in 0..5 {
        let actor = if i % 2 == 0 { "alice" } else { "token ci (xvt_abcd1234)" };
        c.audit(actor, "job.update", Some(&format!("job-{i}")), None).await.unwrap();
    }
    c.audit("bob", "login.failed", None, Some("wrong password")).await.unwrap();
    let newest = c.audit_log(&AuditQuery { limit: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(newest.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["login.failed", "job.update"]);
    assert_eq!(newest[0].detail.as_deref(), Some("wrong password"));
    let older = c.audit_log(&AuditQuery { before_id: Some(newest[1].id), ..Default::default() }).await.unwrap();
    assert_eq!(
        older.iter().map(|e| e.target.clone().unwrap()).collect::<Vec<_>>(),
        ["job-3", "job-2", "job-1", "job-0"]
    );
    let alice = c.audit_log(&AuditQuery { actor: Some("alice".into()), ..Default::default() }).await.unwrap();
    assert_eq!(alice.len(), 3);
    let failed = c.audit_log(&AuditQuery { action: Some("login.failed".into()), ..Default::default() }).await.unwrap();
    assert_eq!(failed.len(), 1);
    let future = AuditQuery { since: Some(Utc::now() + Duration::hours(1)), ..Default::default() };
    assert!(c.audit_log(&future).await.unwrap().is_empty());
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Smtp {
    host: String,
    port: u16,
}

async fn settings_keep_their_secret_apart(c: TestCatalog) {
    assert_eq!(c.setting::<Smtp>("smtp").await.unwrap(), None);
    let smtp = Smtp { host: "127.0.0.1".into(), port: 2525 };
    c.put_setting("smtp", &smtp, Some("mail-password-1")).await.unwrap();
    assert_eq!(c.setting::<Smtp>("smtp").await.unwrap(), Some(smtp));
    assert_eq!(c.setting_secret("smtp").await.unwrap().as_deref(), Some("mail-password-1"));
    let moved = Smtp { host: "127.0.0.1".into(), port: 2526 };
    c.put_setting("smtp", &moved, None).await.unwrap();
    assert_eq!(c.setting::<Smtp>("smtp").await.unwrap(), Some(moved));
    assert_eq!(c.setting_secret("smtp").await.unwrap().as_deref(), Some("mail-password-1"));
    assert!(!format!("{:?}", c.raw("SELECT * FROM settings").await).contains("mail-password-1"));
    assert_eq!(c.setting_secret("absent").await.unwrap(), None);
}

/// Two catalogs on one database (a server and `xenvault job`, or a second server), each
/// in its own thread and runtime as two processes would be, writing at the same time:
/// a writer waits for the other's transaction instead of failing ("database is locked").
async fn two_catalogs_on_one_database_write_at_once(c: TestCatalog) {
    const WRITES: usize = 150;
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let mut writers = Vec::new();
    for name in ["first", "second"] {
        let (data_dir, database) = (c.data_dir.path().to_owned(), c.database());
        let start = start.clone();
        writers.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                // Opened here: a PostgreSQL connection is driven by the runtime that opened it.
                let catalog = xenvault_catalog::Catalog::open(&data_dir, database.as_deref()).await?;
                start.wait();
                for i in 0..WRITES {
                    let job_id = format!("job-{name}");
                    let mut started = catalog.create_run(run(&job_id, RunStatus::Running, Utc::now())).await?;
                    let task = Task::started(format!("{}-vm", started.id), &started.id, None, TaskKind::Vm, "web01");
                    catalog.save_task(&task).await?;
                    catalog.append_log(&started.id, Some(&task.id), LogLevel::Info, &format!("{name} {i}")).await?;
                    started.status = RunStatus::Success;
                    started.finished_at = Some(Utc::now());
                    catalog.update_run(&started).await?;
                    catalog.audit(name, "job.run", Some(&job_id), None).await?;
                }
                Ok::<_, Error>(())
            })
        }));
    }
    for writer in writers {
        writer.join().expect("writer thread").expect("every write of both catalogs succeeds");
    }
    let all = [[(2 * WRITES).to_string()]];
    assert_eq!(c.raw("SELECT COUNT(*) FROM runs WHERE status = 'success'").await, all);
    assert_eq!(c.raw("SELECT COUNT(*) FROM task_logs").await, all);
    assert_eq!(c.raw("SELECT COUNT(*) FROM audit_log").await, all);
}
