//! How long the API's run queries take with many runs in the catalog.
//!
//! `runs_bench DATA_DIR [DATABASE] [RUNS]`: fills the catalog (SQLite in DATA_DIR, or the
//! PostgreSQL URL DATABASE; "-" for SQLite) with RUNS runs (default 10,000) of 10 jobs,
//! each with a run task and 3 VM tasks of a disk each, unless it already holds them; then
//! times each query 200 times and prints p50 and p99. `bench/catalog-bench.sh` runs it on
//! both engines.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use xenvault_catalog::{Catalog, RunQuery};
use xenvault_jobs::model::{Level, Run, RunStatus, RunTotals, Task, TaskKind, TaskStatus, Trigger};

const ROUNDS: usize = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(data_dir) = args.get(1) else {
        return Err("usage: runs_bench DATA_DIR [DATABASE|-] [RUNS]".into());
    };
    let database = args.get(2).filter(|d| *d != "-").map(String::as_str);
    let runs: u64 = args.get(3).map(|n| n.parse()).transpose()?.unwrap_or(10_000);
    let catalog = Catalog::open(std::path::Path::new(data_dir), database).await?;
    println!("engine: {:?}", catalog.engine().await);

    let present = catalog.runs(&RunQuery::default()).await?.total;
    if present < runs {
        let started = Instant::now();
        fill(&catalog, present, runs).await?;
        println!("filled {} runs in {:.1?}", runs - present, started.elapsed());
    }
    let some_run = catalog.runs(&RunQuery { offset: Some(runs / 2), limit: Some(1), ..Default::default() }).await?;
    let some_run = some_run.runs.first().ok_or("no runs")?.id.clone();

    let queries: Vec<(&str, RunQuery)> = vec![
        ("newest 50", RunQuery::default()),
        ("one job", RunQuery { job_id: Some("job-3".into()), ..Default::default() }),
        ("failed", RunQuery { status: Some(RunStatus::Failed), ..Default::default() }),
        ("one VM", RunQuery { vm: Some("vm-0042".into()), ..Default::default() }),
        ("page at 9,000", RunQuery { offset: Some(runs.saturating_sub(1000)), ..Default::default() }),
        (
            "job + time window",
            RunQuery {
                job_id: Some("job-5".into()),
                since: Some(minute(runs as i64 / 4)),
                until: Some(minute(runs as i64 / 2)),
                ..Default::default()
            },
        ),
    ];
    for (name, query) in &queries {
        let mut times = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            catalog.runs(query).await?;
            times.push(started.elapsed());
        }
        report(&format!("runs: {name}"), times);
    }
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        catalog.run(&some_run).await?;
        times.push(started.elapsed());
    }
    report("run detail", times);
    let mut times = Vec::with_capacity(ROUNDS / 10);
    for _ in 0..ROUNDS / 10 {
        let started = Instant::now();
        catalog.vm_last_successes(None).await?;
        times.push(started.elapsed());
    }
    report("last success per VM", times);
    Ok(())
}

fn minute(n: i64) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::minutes(n)
}

/// Runs `from..to`: job `i % 10`, every 7th failed, VMs 3 of 100.
async fn fill(catalog: &Catalog, from: u64, to: u64) -> Result<(), Box<dyn std::error::Error>> {
    for i in from..to {
        let at = minute(i as i64);
        let failed = i % 7 == 0;
        let run = catalog
            .create_run(Run {
                id: format!("run-{i:06}"),
                job_id: format!("job-{}", i % 10),
                schedule_id: Some("s1".into()),
                parent_run_id: None,
                trigger: Trigger::Schedule,
                status: if failed { RunStatus::Failed } else { RunStatus::Success },
                level: Some(Level::Inc),
                scheduled_for: Some(at),
                queued_at: at,
                started_at: Some(at),
                finished_at: Some(at + chrono::Duration::seconds(40)),
                totals: RunTotals { vms: 3, vms_ok: 3, vms_failed: 0, bytes_read: 3 << 30, bytes_stored: 1 << 28 },
                error: None,
            })
            .await?;
        let root = Task::started(format!("{}-run", run.id), &run.id, None, TaskKind::Run, "job");
        catalog.save_task(&root).await?;
        for v in 0..3 {
            let vm_name = format!("vm-{:04}", (i * 3 + v) % 100);
            let mut vm = Task::started(format!("{}-vm{v}", run.id), &run.id, Some(&root.id), TaskKind::Vm, &vm_name);
            vm.subject = Some(format!("uuid-{vm_name}"));
            vm.status = if failed && v == 0 { TaskStatus::Failed } else { TaskStatus::Success };
            vm.finished_at = Some(at + chrono::Duration::seconds(30));
            catalog.save_task(&vm).await?;
            let mut disk = Task::started(format!("{}-disk{v}", run.id), &run.id, Some(&vm.id), TaskKind::Disk, "0");
            disk.status = TaskStatus::Success;
            disk.bytes_read = 1 << 30;
            disk.strategy = Some("cbt-nbd".into());
            catalog.save_task(&disk).await?;
        }
    }
    Ok(())
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!("{name:<28} p50 {:>9.3?}  p99 {:>9.3?}", at(0.5), at(0.99));
}
