//! The scale-out queue (issue 17), each test on SQLite and on PostgreSQL: tasks handed
//! out once, within affinity and limits; expired leases re-queued and fenced; concurrent
//! takers on one database; a live owner's runs left alone by another server's start.

#[allow(dead_code)] // the shared helpers this file does not use
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use common::TestCatalog;
use xenvault_catalog::{Affinity, Catalog, LimitScope, MAX_ATTEMPTS, NodeInfo, PlannedVm, TaskEnd};
use xenvault_jobs::model::{Run, RunStatus, RunTotals, Trigger};

both_backends!(
    tasks_go_out_once_within_affinity_and_limits,
    an_expired_lease_goes_back_to_the_queue_and_fences_its_old_holder,
    two_catalogs_take_concurrently_and_never_share_a_task,
    a_live_owners_runs_are_not_interrupted_by_another_start,
);

fn node(name: &str, affinity: Vec<Affinity>, lease: Duration) -> NodeInfo {
    NodeInfo { name: name.into(), concurrency: 4, lease, affinity }
}

fn vm(n: usize, pool: &str, host: &str, sr: &str) -> PlannedVm {
    PlannedVm {
        vm_uuid: format!("uuid-{n}"),
        vm_name: format!("vm-{n}"),
        pool: pool.into(),
        host: host.into(),
        srs: vec![sr.into()],
    }
}

async fn new_run(catalog: &Catalog, job_id: &str) -> Run {
    let run = Run {
        id: String::new(),
        job_id: job_id.into(),
        schedule_id: None,
        parent_run_id: None,
        trigger: Trigger::Manual,
        status: RunStatus::Running,
        level: None,
        scheduled_for: None,
        queued_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: None,
        totals: RunTotals::default(),
        error: None,
    };
    catalog.create_run(run).await.unwrap()
}

const LONG: Duration = Duration::from_secs(600);

async fn tasks_go_out_once_within_affinity_and_limits(c: TestCatalog) {
    let run = new_run(&c, "job").await;
    let vms = vec![
        vm(1, "p1", "h1", "sr1"),
        vm(2, "p1", "h1", "sr1"),
        vm(3, "p1", "h2", "sr2"),
        vm(4, "p2", "h3", "sr3"),
        vm(5, "p2", "h3", "sr3"),
    ];
    c.enqueue(&run.id, "root", &vms).await.unwrap();
    assert!(c.enqueue(&run.id, "root", &vms[..1]).await.is_err(), "a VM is queued once per run");
    c.set_queue_limit(LimitScope::Host, "h1", Some(1)).await.unwrap();
    c.set_queue_limit(LimitScope::Sr, "sr3", Some(1)).await.unwrap();

    let near_p1 = node("near-p1", vec![Affinity::Pool("p1".into())], LONG);
    c.register_node(&near_p1).await.unwrap();
    let taken = c.take_tasks(&near_p1, 10).await.unwrap();
    let names: Vec<_> = taken.iter().map(|t| t.vm.vm_name.as_str()).collect();
    assert_eq!(names, ["vm-1", "vm-3"], "pool p1 only, one VM of host h1 at a time");
    assert!(taken.iter().all(|t| t.attempts == 1 && t.lost_by.is_none() && t.parent_task_id == "root"));

    let any = node("any", Vec::new(), LONG);
    c.register_node(&any).await.unwrap();
    let taken = c.take_tasks(&any, 10).await.unwrap();
    let names: Vec<_> = taken.iter().map(|t| t.vm.vm_name.as_str()).collect();
    assert_eq!(names, ["vm-4"], "h1 and sr3 are full: vm-2 and vm-5 wait");

    let vm1 = c.take_tasks(&any, 10).await.unwrap();
    assert!(vm1.is_empty(), "{vm1:?}");
    let held = c.heartbeat("near-p1", LONG).await.unwrap();
    assert_eq!(held.len(), 2);
    assert!(c.finish_task(&held[0], "near-p1", TaskEnd::Done).await.unwrap());
    assert!(c.finish_task(&held[1], "near-p1", TaskEnd::Failed).await.unwrap());
    let rest: BTreeSet<_> =
        c.take_tasks(&any, 10).await.unwrap().into_iter().map(|t| t.vm.vm_name).collect::<BTreeSet<_>>();
    assert_eq!(rest, BTreeSet::from(["vm-2".to_owned()]), "h1 is free again; sr3 is still held");
    let counts = c.queue_counts(&run.id).await.unwrap();
    assert_eq!((counts.queued, counts.leased, counts.done, counts.failed), (1, 2, 1, 1));
    assert!(!counts.settled());

    // Cancelling the run: nothing more is handed out, and its holders lose their tasks.
    c.cancel_run_tasks(&run.id).await.unwrap();
    assert!(c.heartbeat("any", LONG).await.unwrap().is_empty());
    assert!(c.queue_counts(&run.id).await.unwrap().settled());
    assert!(c.take_tasks(&any, 10).await.unwrap().is_empty());
}

async fn an_expired_lease_goes_back_to_the_queue_and_fences_its_old_holder(c: TestCatalog) {
    let run = new_run(&c, "job").await;
    c.enqueue(&run.id, "root", &[vm(1, "p", "h", "sr")]).await.unwrap();
    // A lease of 1 ms is over by the next statement.
    let short = Duration::from_millis(1);
    let mut holders = Vec::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let name = format!("node-{attempt}");
        let info = node(&name, Vec::new(), short);
        c.register_node(&info).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let taken = c.take_tasks(&info, 1).await.unwrap();
        assert_eq!(taken.len(), 1, "attempt {attempt}");
        assert_eq!(taken[0].attempts, attempt);
        assert_eq!(taken[0].lost_by, holders.last().cloned(), "attempt {attempt}");
        holders.push(name);
    }
    std::thread::sleep(Duration::from_millis(5));
    let last = node("node-last", Vec::new(), LONG);
    c.register_node(&last).await.unwrap();
    assert!(c.take_tasks(&last, 1).await.unwrap().is_empty(), "failed for good after {MAX_ATTEMPTS} hand-outs");
    let counts = c.queue_counts(&run.id).await.unwrap();
    assert_eq!((counts.queued, counts.leased, counts.failed), (0, 0, 1));
    // The old holders cannot record a result any more.
    for holder in &holders {
        assert!(c.heartbeat(holder, LONG).await.unwrap().is_empty());
    }
    assert_eq!(c.lost_tasks(&run.id).await.unwrap(), vec![("uuid-1".to_owned(), "vm-1".to_owned())]);

    // A clean stop gives tasks back at once, lost by the stopped node.
    let run = new_run(&c, "job-2").await;
    c.enqueue(&run.id, "root", &[vm(2, "p", "h", "sr")]).await.unwrap();
    let taken = c.take_tasks(&last, 1).await.unwrap();
    c.node_stopped("node-last").await.unwrap();
    assert!(!c.finish_task(&taken[0].id, "node-last", TaskEnd::Done).await.unwrap(), "fenced after its stop");
    let again = node("node-again", Vec::new(), LONG);
    c.register_node(&again).await.unwrap();
    let retaken = c.take_tasks(&again, 1).await.unwrap();
    assert_eq!(retaken[0].lost_by.as_deref(), Some("node-last"));
    let nodes = c.nodes().await.unwrap();
    let stopped = nodes.iter().find(|n| n.name == "node-last").unwrap();
    assert!(!stopped.alive && stopped.stopped_at.is_some());
    assert!(nodes.iter().find(|n| n.name == "node-again").unwrap().alive);
}

async fn two_catalogs_take_concurrently_and_never_share_a_task(c: TestCatalog) {
    const TASKS: usize = 40;
    let run = new_run(&c, "job").await;
    let vms: Vec<_> = (0..TASKS).map(|n| vm(n, "p", &format!("h{}", n % 4), "sr")).collect();
    c.enqueue(&run.id, "root", &vms).await.unwrap();
    let other = c.reopen().await.unwrap();
    let (a, b) = (node("a", Vec::new(), LONG), node("b", Vec::new(), LONG));
    c.register_node(&a).await.unwrap();
    other.register_node(&b).await.unwrap();
    let (mine_a, mine_b) = tokio::join!(drain(&c, &a), drain(&other, &b));
    let all: BTreeSet<_> = mine_a.iter().chain(&mine_b).cloned().collect();
    assert_eq!(mine_a.len() + mine_b.len(), TASKS, "a task was handed out twice");
    assert_eq!(all.len(), TASKS);
}

/// Takes one task at a time until none is left; the VMs it got.
async fn drain(catalog: &Catalog, info: &NodeInfo) -> Vec<String> {
    let mut mine = Vec::new();
    loop {
        let taken = catalog.take_tasks(info, 1).await.unwrap();
        if taken.is_empty() {
            return mine;
        }
        mine.extend(taken.into_iter().map(|t| t.vm.vm_uuid));
        tokio::task::yield_now().await;
    }
}

async fn a_live_owners_runs_are_not_interrupted_by_another_start(c: TestCatalog) {
    c.act_as(&node("server-1", Vec::new(), LONG)).await.unwrap();
    let owned = new_run(&c, "job-1").await;
    let other = c.reopen().await.unwrap();
    other.act_as(&node("server-2", Vec::new(), LONG)).await.unwrap();
    let unowned = new_run(&c.reopen().await.unwrap(), "job-2").await;
    let taken: Vec<_> = other.interrupt_unfinished_runs().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(taken, vec![unowned.id], "server-1 is alive: its run is left");
    c.node_stopped("server-1").await.unwrap();
    let taken: Vec<_> = other.interrupt_unfinished_runs().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(taken, vec![owned.id], "server-1 stopped: its run is taken");
}
