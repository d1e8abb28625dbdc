//! A catalog dumped and restored elsewhere (xenvault's configuration backup), on SQLite and
//! on PostgreSQL: the same jobs, runs with their tasks and logs, restore points, users,
//! tokens and settings, and secrets that open with the restored key.

#[allow(dead_code)] // The helpers other catalog tests use.
mod common;

use chrono::{TimeZone, Utc};
use common::TestCatalog;
use xenvault_catalog::{
    Catalog, ConnectionKind, Error, LogLevel, RestorePointEntry, RestorePointQuery, Role, RunQuery,
};
use xenvault_jobs::model::{Job, Run, RunStatus, RunTotals, Task, TaskKind, Trigger};

both_backends!(a_dump_restores_everything_elsewhere, a_restore_never_mixes_catalogs);

/// A catalog with something in every table a server fills; returns the token's secret.
async fn fill(c: &Catalog) -> String {
    c.add_connection(ConnectionKind::Pool, "prod", &"https://xen1.example", Some("pool-password")).await.unwrap();
    c.add_connection(ConnectionKind::Repository, "main", &"/backup/xen", Some("repo-passphrase")).await.unwrap();
    let job: Job = serde_json::from_value(serde_json::json!({
        "name": "nightly", "pool": "prod", "repository": "main",
        "schedules": [{"cron": "0 1 * * *", "retention": {"last": 3}}]
    }))
    .unwrap();
    let job = c.create_job(job).await.unwrap();
    let queued_at = Utc.with_ymd_and_hms(2026, 3, 1, 1, 0, 0).unwrap();
    let run = Run {
        id: String::new(),
        job_id: job.id.clone(),
        schedule_id: Some(job.schedules[0].id.clone()),
        parent_run_id: None,
        trigger: Trigger::Schedule,
        status: RunStatus::Success,
        level: None,
        scheduled_for: Some(queued_at),
        queued_at,
        started_at: Some(queued_at),
        finished_at: Some(queued_at),
        totals: RunTotals { vms: 1, vms_ok: 1, ..Default::default() },
        error: None,
    };
    let run = c.create_run(run).await.unwrap();
    c.save_task(&Task::started("task-1".into(), &run.id, None, TaskKind::Run, "nightly")).await.unwrap();
    c.append_log(&run.id, Some("task-1"), LogLevel::Info, "backed up web01").await.unwrap();
    c.index_restore_point(&RestorePointEntry {
        repository: "main".into(),
        point_id: "point-1".into(),
        vm_uuid: "uuid-web01".into(),
        vm_name: "web01".into(),
        job_id: Some(job.id.clone()),
        run_id: Some(run.id.clone()),
        schedule_id: Some(job.schedules[0].id.clone()),
        created_at: queued_at,
        size: 1 << 30,
    })
    .await
    .unwrap();
    c.create_user("operator", "operator-password", Role::Operator).await.unwrap();
    c.create_session("operator", chrono::Duration::hours(1)).await.unwrap();
    c.put_setting("smtp", &"mail.example", Some("mail-password")).await.unwrap();
    c.audit("admin", "job.create", Some("nightly"), None).await.unwrap();
    c.create_token("ci", Role::ReadOnly, "admin", None).await.unwrap().secret
}

async fn a_dump_restores_everything_elsewhere(c: TestCatalog) {
    let token = fill(&c).await;
    let dump = c.dump().await.unwrap();
    assert_eq!(dump.rows("jobs"), 1);
    assert_eq!(dump.rows("sessions"), 0, "web sessions are not carried");
    // Through its serialized form, as a backup stores it.
    let dump = serde_json::from_slice(&serde_json::to_vec(&dump).unwrap()).unwrap();

    let (fresh, data_dir) = empty_like(&c).await;
    let restored = Catalog::restore_dump(data_dir.path(), fresh.as_deref(), dump, false).await.unwrap();
    assert_eq!(restored.jobs().await.unwrap(), c.jobs().await.unwrap());
    let runs = restored.runs(&RunQuery::default()).await.unwrap().runs;
    assert_eq!(runs, c.runs(&RunQuery::default()).await.unwrap().runs);
    assert_eq!(restored.run(&runs[0].id).await.unwrap().tasks, c.run(&runs[0].id).await.unwrap().tasks);
    let logs = restored.run_logs(&runs[0].id, None, 10).await.unwrap();
    assert_eq!(logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["backed up web01"]);
    assert_eq!(
        restored.restore_points(&RestorePointQuery::default()).await.unwrap(),
        c.restore_points(&RestorePointQuery::default()).await.unwrap()
    );
    // Secrets open with the restored key; users log in, tokens authenticate.
    let secret = restored.connection_secret(ConnectionKind::Repository, "main").await.unwrap();
    assert_eq!(secret.as_deref(), Some("repo-passphrase"));
    assert_eq!(restored.setting_secret("smtp").await.unwrap().as_deref(), Some("mail-password"));
    assert!(restored.check_password("operator", "operator-password").await.unwrap().is_some());
    assert_eq!(restored.authenticate_token(&token).await.unwrap().map(|t| t.name).as_deref(), Some("ci"));
    // New rows number on after the loaded ones.
    let next = restored.append_log(&runs[0].id, None, LogLevel::Info, "after the restore").await.unwrap();
    assert!(next > logs[0].id, "log id {next} after {}", logs[0].id);
}

async fn a_restore_never_mixes_catalogs(c: TestCatalog) {
    fill(&c).await;
    let dump = c.dump().await.unwrap();

    // Not into a catalog that holds rows, nor over another key, unless replacing.
    let into_itself = Catalog::restore_dump(c.data_dir.path(), c.database().as_deref(), dump.clone(), false).await;
    assert!(matches!(into_itself, Err(Error::Conflict(_))), "{:?}", into_itself.err());
    let (fresh, data_dir) = empty_like(&c).await;
    let other = Catalog::open(data_dir.path(), fresh.as_deref()).await.unwrap();
    other.create_user("someone", "their-password", Role::Admin).await.unwrap();
    drop(other);
    match Catalog::restore_dump(data_dir.path(), fresh.as_deref(), dump.clone(), false).await {
        Err(Error::Conflict(message)) => assert!(message.contains("catalog.key"), "{message}"),
        other => panic!("expected a conflict, got {:?}", other.err()),
    }
    let replaced = Catalog::restore_dump(data_dir.path(), fresh.as_deref(), dump.clone(), true).await.unwrap();
    assert!(replaced.check_password("someone", "their-password").await.unwrap().is_none());
    assert_eq!(replaced.jobs().await.unwrap(), c.jobs().await.unwrap());

    // A dump of a newer schema, or one naming a column this build lacks, loads nothing.
    let mut newer = dump.clone();
    newer.schema_version += 1;
    let (fresh, data_dir) = empty_like(&c).await;
    let refused = Catalog::restore_dump(data_dir.path(), fresh.as_deref(), newer, false).await;
    assert!(matches!(refused, Err(Error::SchemaTooNew { .. })), "{:?}", refused.err());
    let mut foreign = dump;
    let jobs = foreign.tables.iter_mut().find(|t| t.name == "jobs").unwrap();
    jobs.columns[0] = "no_such_column".into();
    let refused = Catalog::restore_dump(data_dir.path(), fresh.as_deref(), foreign, false).await;
    assert!(matches!(&refused, Err(Error::Corrupt(m)) if m.contains("no_such_column")), "{:?}", refused.err());
    let reopened = Catalog::open(data_dir.path(), fresh.as_deref()).await.unwrap();
    assert!(reopened.users().await.unwrap().is_empty() && reopened.jobs().await.unwrap().is_empty());
}

/// A new, empty catalog location of the same engine as `c`, and a new data directory.
async fn empty_like(c: &TestCatalog) -> (Option<String>, tempfile::TempDir) {
    let database = match c.database() {
        Some(_) => common::postgres().await.database(),
        None => None,
    };
    (database, tempfile::tempdir().unwrap())
}
