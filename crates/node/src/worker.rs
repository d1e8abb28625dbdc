//! The node: registers in the catalog, heartbeats (renewing the leases of what it holds),
//! takes VM tasks up to its concurrency, and backs each VM up with the same code as the
//! server's runs ([`runner::back_up_vm_task`]), recording the VM's task tree under the
//! run, marked with the node's name. The run itself (its status, totals, retention)
//! belongs to its planner.
//!
//! A task whose previous holder was lost (its lease expired) is first cleaned: the VM's
//! task that node left running becomes interrupted, and what it left on the pool (tagged
//! snapshots, a snapshot being taken, the backup lock) is removed. If that node had
//! committed the VM's restore point before dying, the VM is not backed up twice.
//!
//! A task the node no longer holds (its run was cancelled, or its lease was lost while the
//! node could not reach the catalog) is cancelled: the engine removes its snapshot and
//! commits nothing. Stopping the node cancels what it runs and gives its tasks back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xenvault_catalog::{Catalog, LogLevel, NodeInfo, QueuedTask, TaskEnd};
use xenvault_engine::report::Status;
use xenvault_engine::store::Store;
use xenvault_jobs::model::{Run, Task, TaskKind, TaskStatus};
use xenvault_jobs::runner::{self, BackupTarget, RunSink, VmRun};
use xenvault_pool::Host;
use xenvault_types::metadata::BackupRun;
use xenvault_types::progress::{Event, HiddenProgress};

use crate::cleanup;
use crate::connect::{Repositories, pool_login};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub info: NodeInfo,
    /// Where repositories' immutable objects are cached.
    pub cache_dir: PathBuf,
    /// How long the node waits before asking the queue again when it got nothing.
    pub poll: Duration,
}

/// The tasks this node runs now: how to stop each.
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the node until `stop` is cancelled; then cancels what it runs, gives those tasks
/// back to the queue and says it stopped. Fails only when the catalog refuses it at start.
pub async fn run(catalog: Arc<Catalog>, options: NodeOptions, stop: CancellationToken) -> Result<(), String> {
    let info = options.info.clone();
    catalog.register_node(&info).await.map_err(|e| format!("registering node {}: {e}", info.name))?;
    tracing::info!(node = %info.name, concurrency = info.concurrency, "node registered");
    let running: Running = Arc::default();
    let repositories = Arc::new(Repositories::new(options.cache_dir.clone()));
    let heartbeat = tokio::spawn(heartbeat(catalog.clone(), info.clone(), running.clone(), stop.clone()));
    let finished = Arc::new(tokio::sync::Notify::new());
    let mut workers = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        let free = (info.concurrency as usize).saturating_sub(lock(&running).len());
        let taken = match catalog.take_tasks(&info, free).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(node = %info.name, "taking tasks: {e}");
                Vec::new()
            }
        };
        let got_some = !taken.is_empty();
        for task in taken {
            let cancel = stop.child_token();
            lock(&running).insert(task.id.clone(), cancel.clone());
            let work = TaskWork {
                catalog: catalog.clone(),
                node: info.name.clone(),
                repositories: repositories.clone(),
                task,
                cancel,
                stopping: stop.clone(),
            };
            let (running, finished) = (running.clone(), finished.clone());
            // The engine's backup future is not `Send` (its VMs are a stream over borrowed
            // records): each VM is driven by a blocking-pool thread of this runtime.
            let runtime = tokio::runtime::Handle::current();
            workers.spawn_blocking(move || {
                let id = work.task.id.clone();
                runtime.block_on(work.run());
                lock(&running).remove(&id);
                finished.notify_one();
            });
        }
        if !got_some || lock(&running).len() >= info.concurrency as usize {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = finished.notified() => {}
                _ = tokio::time::sleep(options.poll) => {}
            }
        }
    }
    while workers.join_next().await.is_some() {}
    heartbeat.abort();
    catalog.node_stopped(&info.name).await.map_err(|e| format!("node {} stopping: {e}", info.name))?;
    tracing::info!(node = %info.name, "node stopped");
    Ok(())
}

/// Every third of the lease: the node's heartbeat and its leases renewed; a task it no
/// longer holds is cancelled.
async fn heartbeat(catalog: Arc<Catalog>, info: NodeInfo, running: Running, stop: CancellationToken) {
    let every = info.lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match catalog.heartbeat(&info.name, info.lease).await {
            Ok(held) => {
                for (id, cancel) in lock(&running).iter() {
                    if !held.contains(id) {
                        tracing::warn!(node = %info.name, task = %id, "task no longer held (cancelled or lost): stopping it");
                        cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(node = %info.name, "heartbeat: {e}"),
        }
    }
}

/// One VM task taken from the queue.
struct TaskWork {
    catalog: Arc<Catalog>,
    node: String,
    repositories: Arc<Repositories>,
    task: QueuedTask,
    cancel: CancellationToken,
    stopping: CancellationToken,
}

impl TaskWork {
    async fn run(self) {
        let result = self.back_up().await;
        if self.stopping.is_cancelled() {
            // Given back by `node_stopped`: another node backs the VM up.
            return;
        }
        let end = match result {
            Ok(Status::Ok) => TaskEnd::Done,
            Ok(Status::Failed) => TaskEnd::Failed,
            Err(message) => {
                self.fail_vm(&message).await;
                TaskEnd::Failed
            }
        };
        match self.catalog.finish_task(&self.task.id, &self.node, end).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(node = %self.node, task = %self.task.id, "task ended after it was no longer held")
            }
            Err(e) => tracing::error!(node = %self.node, task = %self.task.id, "recording the task's end: {e}"),
        }
    }

    async fn back_up(&self) -> Result<Status, String> {
        let (catalog, task) = (&self.catalog, &self.task);
        let run = catalog.run(&task.run_id).await.map_err(|e| format!("run {}: {e}", task.run_id))?.run;
        let job = catalog.job(&run.job_id).await.map_err(|e| format!("job {}: {e}", run.job_id))?;
        let login = pool_login(catalog, &job.pool).await.map_err(|e| format!("pool {}: {e}", job.pool))?;
        let repo = self.repositories.get(catalog, &job.repository).await?;
        let store = Store::from_repository(repo);
        let host = Host::connect(&login).await.map_err(|e| format!("logging in to pool {}: {e}", job.pool))?;
        let result = self.back_up_on(&job, &run, &host, &store).await;
        host.logout().await;
        result
    }

    async fn back_up_on(
        &self,
        job: &xenvault_jobs::model::Job,
        run: &Run,
        host: &Host,
        store: &Store,
    ) -> Result<Status, String> {
        let (catalog, task) = (&self.catalog, &self.task);
        let vm_uuid = &task.vm.vm_uuid;
        if let Some(lost_by) = &task.lost_by {
            self.clean_after(lost_by, run, host).await?;
            if self.committed_before(run, store).await? {
                return Ok(Status::Ok);
            }
        }
        let vm = host
            .vms()
            .await
            .map_err(|e| format!("reading the pool's VMs: {e}"))?
            .into_iter()
            .find(|vm| &vm.uuid == vm_uuid && !vm.is_a_snapshot)
            .ok_or_else(|| format!("VM {} ({vm_uuid}) is no longer in the pool", task.vm.vm_name))?;
        let speed_limit = runner::check_settings(&job.settings, Some(store)).await?;
        let sink = Arc::new(NodeSink { catalog: catalog.clone(), node: self.node.clone() });
        let vm_run = VmRun { job, level: run.level.unwrap_or_default(), run, parent_id: &task.parent_task_id };
        let target = BackupTarget { host, store };
        let progress = Arc::new(HiddenProgress);
        let (report, _) =
            runner::back_up_vm_task(vm_run, &vm, target, speed_limit, progress, &sink, &self.cancel).await;
        Ok(report.status)
    }

    /// What the node that held this task before left: its VM task is interrupted, its
    /// snapshots of this VM and the VM's backup lock are removed; said in the run's log.
    async fn clean_after(&self, lost_by: &str, run: &Run, host: &Host) -> Result<(), String> {
        let vm = &self.task.vm;
        let catalog = &self.catalog;
        catalog.interrupt_vm_tasks(&run.id, &vm.vm_uuid).await.map_err(|e| e.to_string())?;
        let removed = cleanup::remove_snapshots_of_run(host, &run.id, Some(&vm.vm_uuid))
            .await
            .map_err(|e| format!("removing what node {lost_by} left of VM {}: {e}", vm.vm_name))?;
        let message = format!(
            "VM {}: node {lost_by} lost it (lease expired); node {} removed the {} snapshot(s) it left{}",
            vm.vm_name,
            self.node,
            removed.len(),
            if removed.is_empty() { String::new() } else { format!(": {}", removed.join(", ")) }
        );
        self.log(LogLevel::Warning, &message).await;
        Ok(())
    }

    /// Whether the lost node committed this VM's restore point for the run before it died;
    /// if so the VM's task records it, and the VM is not backed up twice.
    async fn committed_before(&self, run: &Run, store: &Store) -> Result<bool, String> {
        let vm = &self.task.vm;
        let points = store.repository().restore_points().await.map_err(|e| format!("listing restore points: {e}"))?;
        let Some(point) = points.iter().find(|m| {
            m.source.id == vm.vm_uuid
                && BackupRun::of(&m.metadata).is_some_and(|b| b.run_id.as_deref() == Some(run.id.as_str()))
        }) else {
            return Ok(false);
        };
        // The lost node may also have recorded the VM's success before it died.
        let recorded = self.catalog.run(&run.id).await.map_err(|e| format!("run {}: {e}", run.id))?.tasks;
        if recorded.iter().any(|t| {
            t.kind == TaskKind::Vm && t.subject.as_ref() == Some(&vm.vm_uuid) && t.status == TaskStatus::Success
        }) {
            return Ok(true);
        }
        let mut task = Task::started(new_id(), &run.id, Some(&self.task.parent_task_id), TaskKind::Vm, &vm.vm_name);
        task.subject = Some(vm.vm_uuid.clone());
        task.status = TaskStatus::Success;
        task.finished_at = Some(chrono::Utc::now());
        task.node = Some(self.node.clone());
        task.reason = Some(format!("restore point {} was committed before its node was lost", point.id));
        crate::record::save_task(&self.catalog, &task).await;
        Ok(true)
    }

    /// The VM failed before its backup could start (run, job, pool or repository): a
    /// failed VM task says why.
    async fn fail_vm(&self, message: &str) {
        let vm = &self.task.vm;
        let mut task =
            Task::started(new_id(), &self.task.run_id, Some(&self.task.parent_task_id), TaskKind::Vm, &vm.vm_name);
        task.subject = Some(vm.vm_uuid.clone());
        task.status = TaskStatus::Failed;
        task.finished_at = Some(chrono::Utc::now());
        task.node = Some(self.node.clone());
        task.errors.push(message.to_owned());
        crate::record::save_task(&self.catalog, &task).await;
    }

    async fn log(&self, level: LogLevel, message: &str) {
        if let Err(e) = self.catalog.append_log(&self.task.run_id, None, level, message).await {
            tracing::error!(run = %self.task.run_id, "writing the run's log ({message}): {e}");
        }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A node's record of the VM tasks it runs: each marked with the node's name. The run's
/// own record is its planner's: a node never writes it.
struct NodeSink {
    catalog: Arc<Catalog>,
    node: String,
}

impl RunSink for NodeSink {
    async fn save_run(&self, _run: &Run) {}

    async fn save_task(&self, task: &Task) {
        let mut task = task.clone();
        task.node = Some(self.node.clone());
        crate::record::save_task(&self.catalog, &task).await;
    }

    fn progress(&self, _run_id: &str, _event: &Event) {}

    async fn runs_of_schedule(&self, _job_id: &str, _schedule_id: &str) -> Vec<String> {
        Vec::new()
    }
}
