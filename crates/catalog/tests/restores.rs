//! Restores the API starts, kept in the catalog: recorded, updated, listed with filters and
//! pages, and marked interrupted when a crash left them running; on SQLite and PostgreSQL.

// Shared with catalog.rs, which uses the parts this file does not.
#[allow(dead_code)]
mod common;

use common::TestCatalog;
use xenvault_catalog::{Error, Restore, RestoreKind, RestoreQuery, RestoreStatus, WorkProgress};

both_backends!(a_restore_is_recorded_updated_and_kept, restores_are_listed_with_filters_and_pages_and_interrupted);

fn restore(kind: RestoreKind, repository: &str) -> Restore {
    Restore {
        id: String::new(),
        kind,
        status: RestoreStatus::Running,
        repository: repository.into(),
        restore_point: "f1871b294a98209dd1c949d27b3168fe".into(),
        requested_by: "token ci (xvt_abc…)".into(),
        request: serde_json::json!({"kind": "disk", "sr": "sr-uuid"}),
        progress: Vec::new(),
        report: None,
        error: None,
        started_at: chrono::Utc::now(),
        finished_at: None,
    }
}

async fn a_restore_is_recorded_updated_and_kept(c: TestCatalog) {
    let mut made = c.create_restore(restore(RestoreKind::Disk, "main")).await.unwrap();
    assert!(!made.id.is_empty());
    assert_eq!(c.restore(&made.id).await.unwrap(), made);

    made.status = RestoreStatus::Success;
    made.progress = vec![WorkProgress {
        label: "web01 disk 0".into(),
        vm: Some("vm-uuid".into()),
        disk: Some(0),
        phase: "restore".into(),
        done: 4096,
        total: 4096,
        finished: true,
    }];
    made.report = Some(serde_json::json!({"vdi_uuid": "new-vdi", "bytes_written": 4096}));
    made.finished_at = Some(made.started_at + chrono::Duration::seconds(3));
    c.update_restore(&made).await.unwrap();
    // It stays in the history when the catalog is opened again.
    assert_eq!(c.reopen().await.unwrap().restore(&made.id).await.unwrap(), made);

    assert!(matches!(c.restore("nope").await, Err(Error::NotFound { what: "restore", .. })));
    made.id = "nope".into();
    assert!(matches!(c.update_restore(&made).await, Err(Error::NotFound { .. })));
}

async fn restores_are_listed_with_filters_and_pages_and_interrupted(c: TestCatalog) {
    let disk = c.create_restore(restore(RestoreKind::Disk, "main")).await.unwrap();
    let mut files = c.create_restore(restore(RestoreKind::Files, "main")).await.unwrap();
    let vm = c.create_restore(restore(RestoreKind::Vm, "offsite")).await.unwrap();
    files.status = RestoreStatus::Failed;
    files.error = Some("no such file or directory: /etc/nope".into());
    files.finished_at = Some(chrono::Utc::now());
    c.update_restore(&files).await.unwrap();

    let all = c.restores(&RestoreQuery::default()).await.unwrap();
    assert_eq!(all.total, 3);
    let newest_first: Vec<&str> = all.restores.iter().map(|r| r.id.as_str()).collect();
    let mut by_time = vec![(vm.started_at, vm.id.as_str()), (files.started_at, files.id.as_str())];
    by_time.push((disk.started_at, disk.id.as_str()));
    by_time.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    assert_eq!(newest_first, by_time.iter().map(|(_, id)| *id).collect::<Vec<_>>());
    let failed = c.restores(&RestoreQuery { status: Some(RestoreStatus::Failed), ..Default::default() }).await.unwrap();
    assert_eq!((failed.total, failed.restores[0].id.as_str()), (1, files.id.as_str()));
    let offsite = c.restores(&RestoreQuery { repository: Some("offsite".into()), ..Default::default() }).await.unwrap();
    assert_eq!((offsite.total, offsite.restores[0].kind), (1, RestoreKind::Vm));
    let disks = c.restores(&RestoreQuery { kind: Some(RestoreKind::Disk), ..Default::default() }).await.unwrap();
    assert_eq!(disks.restores.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [disk.id.as_str()]);
    let page = c.restores(&RestoreQuery { limit: Some(1), offset: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!((page.total, page.restores.len()), (3, 1));
    let past = c.restores(&RestoreQuery { offset: Some(u64::MAX), ..Default::default() }).await.unwrap();
    assert_eq!((past.total, past.restores.len()), (3, 0));

    // The two still running when the server stopped become interrupted; the failed one stays.
    let interrupted = c.interrupt_unfinished_restores().await.unwrap();
    let mut ids: Vec<&str> = interrupted.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![disk.id.as_str(), vm.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    for id in expected {
        let stored = c.restore(id).await.unwrap();
        assert_eq!(stored.status, RestoreStatus::Interrupted);
        assert!(stored.finished_at.is_some());
    }
    assert_eq!(c.restore(&files.id).await.unwrap().status, RestoreStatus::Failed);
    assert!(c.interrupt_unfinished_restores().await.unwrap().is_empty());
}
