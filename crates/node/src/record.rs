//! Recording a task in the catalog with the lines it puts in its run's log: what the
//! server's runs and the nodes' VM tasks both write.

use xenvault_catalog::{Catalog, LogLevel};
use xenvault_jobs::model::{Task, TaskStatus};

/// Stores the task's state and logs it; failures are logged, never fatal (a backup does
/// not fail because its history could not be written).
pub async fn save_task(catalog: &Catalog, task: &Task) {
    if let Err(e) = catalog.save_task(task).await {
        tracing::error!(run = %task.run_id, "recording task {}: {e}", task.name);
    }
    for (level, message) in task_log_lines(task) {
        if let Err(e) = catalog.append_log(&task.run_id, Some(&task.id), level, &message).await {
            tracing::error!(run = %task.run_id, "writing the run's log: {e}");
        }
    }
}

/// What a task's new state says in the run's log: its start, its end, its warnings and
/// errors (and the node that ran it, when one did).
pub fn task_log_lines(task: &Task) -> Vec<(LogLevel, String)> {
    let subject = format!("{} {}", format!("{:?}", task.kind).to_lowercase(), task.name);
    let on = task.node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default();
    if task.status == TaskStatus::Running {
        return vec![(LogLevel::Info, format!("{subject}: started{on}"))];
    }
    let status = format!("{:?}", task.status).to_lowercase();
    let level = if task.status == TaskStatus::Success { LogLevel::Info } else { LogLevel::Warning };
    let mut lines =
        vec![(level, format!("{subject}: {status}{on}, {} bytes read, {} stored", task.bytes_read, task.bytes_stored))];
    lines.extend(task.warnings.iter().map(|w| (LogLevel::Warning, format!("{subject}: {w}"))));
    lines.extend(task.errors.iter().map(|e| (LogLevel::Error, format!("{subject}: {e}"))));
    lines
}
