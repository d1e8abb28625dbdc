//! The server's side of scale-out. It joins the nodes as a planner (a node that takes no
//! VM: its runs are its own while it heartbeats) and plans each backup run for the nodes:
//! the job's selection resolved on its pool, each VM placed (its host, the SRs of its
//! disks: what affinity and the per-pool, per-host and per-SR limits look at) and queued
//! as one task under the run's root task; then it waits for the nodes to settle every
//! task and sums what they recorded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xenvault_catalog::{Catalog, Engine, NodeInfo, PlannedVm};
use xenvault_jobs::model::{Job, Run, RunTotals, Schedule, TaskKind, TaskStatus};
use xenvault_jobs::runner::{self, BackupTarget, Outcome, RunSink};
use xenvault_pool::Host;
use xenvault_pool::Value;
use xenvault_pool::records::{Vm, all_records};

/// How often the planner looks at the queue while nodes work.
const POLL: Duration = Duration::from_millis(250);

/// How long a planner's runs stay its own without a heartbeat.
const PLANNER_LEASE: Duration = Duration::from_secs(30);

/// Registers this server as planner `name` (default `server@HOSTNAME`) on a PostgreSQL
/// catalog and makes it the owner of the runs it creates.
pub async fn join(catalog: &Catalog, name: Option<&str>) -> Result<(), String> {
    if catalog.engine().await != Engine::Postgres {
        return Err("scale_out needs a shared PostgreSQL catalog (catalog = \"postgres://...\")".into());
    }
    let name = match name {
        Some(name) => name.to_owned(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("server@{}", host.trim())
        }
    };
    let info = NodeInfo { name, concurrency: 0, lease: PLANNER_LEASE, affinity: Vec::new() };
    catalog.act_as(&info).await.map_err(|e| format!("joining the scale-out nodes: {e}"))
}

/// The planner's heartbeat, every third of its lease, until `stop`.
pub async fn keep_alive(catalog: Arc<Catalog>, stop: CancellationToken) {
    let Some(name) = catalog.owner().map(str::to_owned) else { return };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PLANNER_LEASE / 3) => {}
        }
        if let Err(e) = catalog.heartbeat(&name, PLANNER_LEASE).await {
            tracing::warn!(node = %name, "planner heartbeat: {e}");
        }
    }
}

/// Where each VM is: its host (the one it runs on, else the one it has affinity to, by
/// name label) and the uuids of the SRs of its disks; three calls whatever the pool's size.
pub async fn place(host: &Host, pool: &str, vms: &[Vm]) -> Result<Vec<PlannedVm>, xenvault_pool::Error> {
    let hosts: HashMap<String, String> = host.hosts().await?.into_iter().map(|h| (h.reference, h.name_label)).collect();
    let vbds = host.call("VBD.get_all_records", vec![]).await?;
    let vdis = host.call("VDI.get_all_records", vec![]).await?;
    let srs = host.call("SR.get_all_records", vec![]).await?;
    let field = |record: &Value, name: &str| record.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let sr_uuid: HashMap<String, String> = all_records(&srs).into_iter().map(|(r, v)| (r, field(v, "uuid"))).collect();
    let vdi_sr: HashMap<String, String> = all_records(&vdis).into_iter().map(|(r, v)| (r, field(v, "SR"))).collect();
    // VM reference → the SR uuids of its disk VBDs, each once, sorted.
    let mut vm_srs: HashMap<String, BTreeMap<String, ()>> = HashMap::new();
    for (_, vbd) in all_records(&vbds) {
        if field(vbd, "type").eq_ignore_ascii_case("disk")
            && let Some(sr) = vdi_sr.get(&field(vbd, "VDI")).and_then(|sr| sr_uuid.get(sr))
        {
            vm_srs.entry(field(vbd, "VM")).or_default().insert(sr.clone(), ());
        }
    }
    Ok(vms
        .iter()
        .map(|vm| {
            let on = [&vm.resident_on, &vm.affinity].into_iter().find_map(|r| hosts.get(r.as_str()));
            PlannedVm {
                vm_uuid: vm.uuid.clone(),
                vm_name: vm.name_label.clone(),
                pool: pool.to_owned(),
                host: on.cloned().unwrap_or_default(),
                srs: vm_srs.remove(&vm.reference).map(|srs| srs.into_keys().collect()).unwrap_or_default(),
            }
        })
        .collect())
}

/// Runs `run` of backup job `job` through the queue: planned into VM tasks (the selection
/// resolved on the job's pool), taken and backed up by the nodes, then finished
/// like any run (status from the VMs' results, the schedule's retention after a success).
/// Cancelling stops handing VMs out and tells the nodes to stop those they hold.
pub async fn run_queued<S: RunSink>(
    catalog: &Arc<Catalog>,
    job: &Job,
    schedule: Option<&Schedule>,
    run: Run,
    target: BackupTarget<'_>,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Outcome {
    let run_id = run.id.clone();
    let BackupTarget { host, store } = target;
    runner::run_distributed(job, schedule, run, store, sink, cancel, |root_id, cancel| async move {
        let vms = xenvault_jobs::selection::resolve(host, &job.selection).await.map_err(|e| e.to_string())?;
        let planned = place(host, &job.pool, &vms).await.map_err(|e| format!("placing the VMs: {e}"))?;
        catalog.enqueue(&run_id, &root_id, &planned).await.map_err(|e| format!("queueing the VMs: {e}"))?;
        wait_settled(catalog, &run_id, &cancel).await?;
        totals(catalog, &run_id).await
    })
    .await
}

/// Until no task of the run is queued or held; on cancellation the run's tasks are
/// cancelled in the queue (nodes holding one stop it at their next heartbeat).
async fn wait_settled(catalog: &Catalog, run_id: &str, cancel: &CancellationToken) -> Result<(), String> {
    let mut cancelled = false;
    loop {
        if cancel.is_cancelled() && !cancelled {
            catalog.cancel_run_tasks(run_id).await.map_err(|e| e.to_string())?;
            cancelled = true;
        }
        let counts = catalog.queue_counts(run_id).await.map_err(|e| e.to_string())?;
        if counts.settled() {
            return Ok(());
        }
        tokio::select! {
            _ = cancel.cancelled(), if !cancelled => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The run's totals from the VM tasks the nodes recorded (a VM tried twice counts once,
/// by its last result), with a failed task recorded for each VM whose tasks were lost
/// too often; and the uuids of the VMs backed up.
async fn totals(catalog: &Catalog, run_id: &str) -> Result<(RunTotals, Vec<String>), String> {
    let detail = catalog.run(run_id).await.map_err(|e| e.to_string())?;
    let root_id = detail.tasks.iter().find(|t| t.kind == TaskKind::Run).map(|t| t.id.clone());
    let mut last: BTreeMap<String, &xenvault_jobs::model::Task> = BTreeMap::new();
    for task in detail.tasks.iter().filter(|t| t.kind == TaskKind::Vm && t.status != TaskStatus::Interrupted) {
        if let Some(uuid) = &task.subject {
            last.insert(uuid.clone(), task);
        }
    }
    let mut totals = RunTotals::default();
    let mut backed_up = Vec::new();
    for (uuid, task) in &last {
        totals.vms += 1;
        if task.status == TaskStatus::Success {
            totals.vms_ok += 1;
            backed_up.push(uuid.clone());
        } else {
            totals.vms_failed += 1;
        }
        totals.bytes_read += task.bytes_read;
        totals.bytes_stored += task.bytes_stored;
    }
    for (uuid, name) in catalog.lost_tasks(run_id).await.map_err(|e| e.to_string())? {
        let mut task = xenvault_jobs::model::Task::started(uuid_v4(), run_id, root_id.as_deref(), TaskKind::Vm, &name);
        task.subject = Some(uuid);
        task.status = TaskStatus::Failed;
        task.finished_at = Some(chrono::Utc::now());
        task.errors.push(format!(
            "handed out {} times, and each time the node's lease expired before it recorded a result",
            xenvault_catalog::MAX_ATTEMPTS
        ));
        catalog.save_task(&task).await.map_err(|e| e.to_string())?;
        totals.vms += 1;
        totals.vms_failed += 1;
    }
    Ok((totals, backed_up))
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}
