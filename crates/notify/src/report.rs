//! What a notification says about a run, built once from the task tree and written as the
//! webhook's JSON, the email's text and the email's HTML.

use std::collections::HashMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use xenvault_jobs::model::{Job, JobKind, Run, RunStatus, Task, TaskKind, TaskStatus};
use xenvault_types::units;
use xenvault_xapi_wire::xmlrpc::escape_into;

/// The webhook's body: the job (its id, name and kind, not its settings: those name the
/// notification targets, which may carry secrets), the run, and a summary per VM.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub job: JobRef<'a>,
    pub run: &'a Run,
    pub vms: Vec<VmSummary>,
    /// Warnings and errors of steps outside any VM (e.g. retention), named by step.
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct JobRef<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub kind: JobKind,
}

/// One VM's backup in the run: its task, with what its disks and steps said.
#[derive(Debug, Serialize)]
pub struct VmSummary {
    pub name: String,
    pub vm_uuid: Option<String>,
    pub status: TaskStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// How its disks were read (each distinct strategy once, in disk order).
    pub strategies: Vec<String>,
    /// Its own, then its disks' and steps' (prefixed with their name).
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl<'a> Report<'a> {
    pub fn new(job: &'a Job, run: &'a Run, tasks: &[Task]) -> Report<'a> {
        let mut children: HashMap<&str, Vec<&Task>> = HashMap::new();
        for task in tasks {
            if let Some(parent) = &task.parent_id {
                children.entry(parent.as_str()).or_default().push(task);
            }
        }
        let mut vms = Vec::new();
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        for task in tasks {
            match task.kind {
                TaskKind::Vm => vms.push(VmSummary::new(task, &children)),
                TaskKind::Step if !under_a_vm(task, tasks) => {
                    warnings.extend(task.warnings.iter().map(|w| format!("{}: {w}", task.name)));
                    errors.extend(task.errors.iter().map(|e| format!("{}: {e}", task.name)));
                }
                _ => {}
            }
        }
        let job = JobRef { id: &job.id, name: &job.name, kind: job.kind };
        Report { job, run, vms, warnings, errors }
    }

    /// E.g. `[xenvault] nightly: partial (2 of 3 VMs backed up)`.
    pub fn subject(&self) -> String {
        let totals = &self.run.totals;
        format!(
            "[xenvault] {}: {} ({} of {} VMs backed up)",
            self.job.name,
            status_word(self.run),
            totals.vms_ok,
            totals.vms
        )
    }

    pub fn text(&self) -> String {
        let run = self.run;
        let mut out = String::new();
        let _ = writeln!(out, "Job {} ({}): {}", self.job.name, self.job.id, status_word(run));
        let _ = writeln!(out, "Run {} ({:?} trigger)", run.id, run.trigger);
        for (label, value) in self.facts() {
            let _ = writeln!(out, "{label}: {value}");
        }
        if let Some(error) = &run.error {
            let _ = writeln!(out, "Error: {error}");
        }
        out.push('\n');
        for vm in &self.vms {
            let _ = writeln!(
                out,
                "{} {}: read {}, stored {}{}",
                status_mark(vm.status),
                vm.name,
                units::bytes(vm.bytes_read),
                units::bytes(vm.bytes_stored),
                strategies_suffix(&vm.strategies)
            );
            for error in &vm.errors {
                let _ = writeln!(out, "    error: {error}");
            }
            for warning in &vm.warnings {
                let _ = writeln!(out, "    warning: {warning}");
            }
        }
        for error in &self.errors {
            let _ = writeln!(out, "error: {error}");
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }

    /// A self-contained page (inline styles: mail clients drop style sheets).
    pub fn html(&self) -> String {
        let run = self.run;
        let mut out = String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
        escape_into(&self.subject(), &mut out);
        out.push_str("</title></head>\n<body style=\"font-family: sans-serif; color: #222;\">\n<h2>");
        escape_into(self.job.name, &mut out);
        let _ = write!(out, ": <span style=\"color: {}\">", status_color(run));
        escape_into(status_word(run), &mut out);
        out.push_str("</span></h2>\n<table cellpadding=\"3\">\n");
        let mut facts = vec![("Job id", self.job.id.to_owned()), ("Run", run.id.clone())];
        facts.extend(self.facts());
        if let Some(error) = &run.error {
            facts.push(("Error", error.clone()));
        }
        for (label, value) in facts {
            out.push_str("<tr><th align=\"left\">");
            escape_into(label, &mut out);
            out.push_str("</th><td>");
            escape_into(&value, &mut out);
            out.push_str("</td></tr>\n");
        }
        out.push_str("</table>\n");
        if !self.vms.is_empty() {
            out.push_str(
                "<h3>VMs</h3>\n<table cellpadding=\"4\" style=\"border-collapse: collapse;\" border=\"1\">\n\
                 <tr><th>VM</th><th>Status</th><th>Read</th><th>Stored</th><th>Strategy</th><th>Messages</th></tr>\n",
            );
            for vm in &self.vms {
                out.push_str("<tr><td>");
                escape_into(&vm.name, &mut out);
                let _ = write!(out, "</td><td style=\"color: {}\">{:?}</td>", task_color(vm.status), vm.status);
                let _ = write!(
                    out,
                    "<td align=\"right\">{}</td><td align=\"right\">{}</td><td>",
                    units::bytes(vm.bytes_read),
                    units::bytes(vm.bytes_stored)
                );
                escape_into(&vm.strategies.join(", "), &mut out);
                out.push_str("</td><td>");
                messages_html(&vm.errors, &vm.warnings, &mut out);
                out.push_str("</td></tr>\n");
            }
            out.push_str("</table>\n");
        }
        if !self.errors.is_empty() || !self.warnings.is_empty() {
            out.push_str("<h3>Other steps</h3>\n<p>");
            messages_html(&self.errors, &self.warnings, &mut out);
            out.push_str("</p>\n");
        }
        out.push_str("</body></html>\n");
        out
    }

    /// The run's times and totals, as label and value.
    fn facts(&self) -> Vec<(&'static str, String)> {
        let run = self.run;
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        };
        let mut facts = vec![("Started", time(run.started_at)), ("Finished", time(run.finished_at))];
        if let (Some(start), Some(end)) = (run.started_at, run.finished_at) {
            facts.push(("Duration", duration((end - start).num_seconds())));
        }
        if let Some(level) = run.level {
            facts.push(("Level", format!("{level:?}").to_lowercase()));
        }
        let totals = &run.totals;
        facts
            .push(("VMs", format!("{} backed up, {} failed, {} in all", totals.vms_ok, totals.vms_failed, totals.vms)));
        facts.push(("Read", units::bytes(totals.bytes_read)));
        facts.push(("Stored", units::bytes(totals.bytes_stored)));
        facts
    }
}

impl VmSummary {
    fn new(vm: &Task, children: &HashMap<&str, Vec<&Task>>) -> VmSummary {
        let mut summary = VmSummary {
            name: vm.name.clone(),
            vm_uuid: vm.subject.clone(),
            status: vm.status,
            started_at: vm.started_at,
            finished_at: vm.finished_at,
            bytes_read: vm.bytes_read,
            bytes_stored: vm.bytes_stored,
            strategies: vm.strategy.iter().cloned().collect(),
            warnings: vm.warnings.clone(),
            errors: vm.errors.clone(),
        };
        let mut pending: Vec<&Task> = children.get(vm.id.as_str()).cloned().unwrap_or_default();
        pending.reverse();
        while let Some(task) = pending.pop() {
            if let Some(strategy) = &task.strategy
                && !summary.strategies.contains(strategy)
            {
                summary.strategies.push(strategy.clone());
            }
            summary.warnings.extend(task.warnings.iter().map(|w| format!("{}: {w}", task.name)));
            summary.errors.extend(task.errors.iter().map(|e| format!("{}: {e}", task.name)));
            if let Some(grandchildren) = children.get(task.id.as_str()) {
                pending.extend(grandchildren.iter().rev());
            }
        }
        summary
    }
}

/// Whether a task sits somewhere below a VM task.
fn under_a_vm(task: &Task, tasks: &[Task]) -> bool {
    let mut parent = task.parent_id.as_deref();
    // Bounded by the tree's size, so a malformed tree with a cycle cannot loop forever.
    for _ in 0..tasks.len() {
        let Some(id) = parent else { return false };
        let Some(found) = tasks.iter().find(|t| t.id == id) else { return false };
        if found.kind == TaskKind::Vm {
            return true;
        }
        parent = found.parent_id.as_deref();
    }
    false
}

fn status_word(run: &Run) -> &'static str {
    use RunStatus::*;
    match run.status {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Partial => "partial",
        Failed => "failed",
        Cancelled => "cancelled",
        Interrupted => "interrupted",
    }
}

fn status_color(run: &Run) -> &'static str {
    use RunStatus::*;
    match run.status {
        Success => "#1a7f37",
        Partial | Cancelled | Interrupted => "#9a6700",
        Failed => "#cf222e",
        Queued | Running => "#57606a",
    }
}

fn task_color(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Success => "#1a7f37",
        TaskStatus::Failed => "#cf222e",
        _ => "#9a6700",
    }
}

/// A text report's line mark: readable without colours.
fn status_mark(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Success => "[ok]     ",
        TaskStatus::Failed => "[FAILED] ",
        TaskStatus::Skipped => "[skipped]",
        TaskStatus::Cancelled => "[cancel] ",
        TaskStatus::Interrupted => "[interr] ",
        TaskStatus::Running => "[running]",
    }
}

fn strategies_suffix(strategies: &[String]) -> String {
    if strategies.is_empty() { String::new() } else { format!(" ({})", strategies.join(", ")) }
}

fn messages_html(errors: &[String], warnings: &[String], out: &mut String) {
    for error in errors {
        out.push_str("<div style=\"color: #cf222e\">error: ");
        escape_into(error, out);
        out.push_str("</div>");
    }
    for warning in warnings {
        out.push_str("<div style=\"color: #9a6700\">warning: ");
        escape_into(warning, out);
        out.push_str("</div>");
    }
}

/// E.g. `1 h 02 min 05 s`, `4 min 10 s`, `12 s`.
fn duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s:02} s"),
        _ => format!("{h} h {m:02} min {s:02} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(duration(12), "12 s");
        assert_eq!(duration(250), "4 min 10 s");
        assert_eq!(duration(3725), "1 h 02 min 05 s");
        assert_eq!(duration(-3), "0 s");
    }
}
