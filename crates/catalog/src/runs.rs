//! Runs, their task trees (run → VM → disk → steps, stored flat with parent links) and
//! their log lines; the queries the API lists history with; the start-up recovery that
//! marks what a crash left running as interrupted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use xenvault_jobs::model::{Run, RunStatus, RunTotals, Task, TaskKind, TaskStatus};

use crate::db::{Filters, Row, params};
use crate::error::{Error, Result};
use crate::{Catalog, enum_text, now, text_enum, to_json};

/// Which runs to list: newest first, every filter optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RunQuery {
    pub job_id: Option<String>,
    pub status: Option<RunStatus>,
    /// Runs that covered this VM (uuid or name).
    pub vm: Option<String>,
    /// Runs queued at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Runs queued before this instant.
    pub until: Option<DateTime<Utc>>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<Run>,
    /// Runs matching the filters, over all pages.
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    pub run: Run,
    /// In the order they were created; `parent_id` links the tree.
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Increasing: a follower asks for lines after the last id it saw.
    pub id: i64,
    pub run_id: String,
    pub task_id: Option<String>,
    pub at: DateTime<Utc>,
    pub level: LogLevel,
    pub message: String,
}

/// The newest successful backup of a VM by a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmLastSuccess {
    pub vm_uuid: String,
    pub vm_name: String,
    pub job_id: String,
    pub run_id: String,
    pub finished_at: DateTime<Utc>,
}

const RUN_COLUMNS: &str = "id, job_id, schedule_id, parent_run_id, trigger_kind, status, level, scheduled_for, \
     queued_at, started_at, finished_at, vms, vms_ok, vms_failed, bytes_read, bytes_stored, error";

fn count(row: &Row, i: usize) -> Result<u32> {
    u32::try_from(row.int(i)?).map_err(|_| Error::Corrupt(format!("column {i}: count out of range")))
}

fn run_row(row: &Row) -> Result<Run> {
    Ok(Run {
        id: row.text(0)?,
        job_id: row.text(1)?,
        schedule_id: row.opt_text(2)?,
        parent_run_id: row.opt_text(3)?,
        trigger: text_enum(&row.text(4)?)?,
        status: text_enum(&row.text(5)?)?,
        level: row.opt_text(6)?.map(|l| text_enum(&l)).transpose()?,
        scheduled_for: row.opt_time(7)?,
        queued_at: row.time(8)?,
        started_at: row.opt_time(9)?,
        finished_at: row.opt_time(10)?,
        totals: RunTotals {
            vms: count(row, 11)?,
            vms_ok: count(row, 12)?,
            vms_failed: count(row, 13)?,
            bytes_read: row.uint(14)?,
            bytes_stored: row.uint(15)?,
        },
        error: row.opt_text(16)?,
    })
}

const TASK_COLUMNS: &str = "id, run_id, parent_id, kind, name, subject, status, started_at, finished_at, \
     bytes_total, bytes_read, bytes_stored, strategy, reason, warnings, errors, node";

fn task_row(row: &Row) -> Result<Task> {
    Ok(Task {
        id: row.text(0)?,
        run_id: row.text(1)?,
        parent_id: row.opt_text(2)?,
        kind: text_enum(&row.text(3)?)?,
        name: row.text(4)?,
        subject: row.opt_text(5)?,
        status: text_enum(&row.text(6)?)?,
        started_at: row.opt_time(7)?,
        finished_at: row.opt_time(8)?,
        bytes_total: row.opt_int(9)?.map(|v| u64::try_from(v).unwrap_or(0)),
        bytes_read: row.uint(10)?,
        bytes_stored: row.uint(11)?,
        strategy: row.opt_text(12)?,
        reason: row.opt_text(13)?,
        warnings: row.json(14)?,
        errors: row.json(15)?,
        node: row.opt_text(16)?,
    })
}

const UNFINISHED: &str = "status IN ('queued', 'running')";

impl Catalog {
    /// Records a new run (an empty id gets one) and returns it. Refused while another run
    /// of the same job is queued or running: one run of a job at a time, also across
    /// servers sharing a PostgreSQL catalog.
    pub async fn create_run(&self, mut run: Run) -> Result<Run> {
        if run.id.is_empty() {
            run.id = uuid::Uuid::new_v4().to_string();
        }
        let mut tx = self.db.begin().await?;
        if !run.status.is_finished() {
            let busy = tx
                .query_opt(
                    &format!("SELECT id FROM runs WHERE job_id = $1 AND {UNFINISHED} LIMIT 1"),
                    params![&run.job_id],
                )
                .await?;
            if let Some(busy) = busy {
                return Err(Error::Conflict(format!("job {} already has run {} going", run.job_id, busy.text(0)?)));
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLUMNS}, owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16, $17, $18)"
            ),
            params![
                &run.id,
                &run.job_id,
                run.schedule_id.as_deref(),
                run.parent_run_id.as_deref(),
                enum_text(&run.trigger)?,
                enum_text(&run.status)?,
                run.level.map(|l| enum_text(&l)).transpose()?,
                run.scheduled_for,
                run.queued_at,
                run.started_at,
                run.finished_at,
                run.totals.vms,
                run.totals.vms_ok,
                run.totals.vms_failed,
                run.totals.bytes_read,
                run.totals.bytes_stored,
                run.error.as_deref(),
                self.owner()
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Stores the run's state (status, level, times, totals, error).
    pub async fn update_run(&self, run: &Run) -> Result<()> {
        let changed = self
            .db
            .execute(
                "UPDATE runs SET status = $2, level = $3, started_at = $4, finished_at = $5, vms = $6, vms_ok = $7,
                 vms_failed = $8, bytes_read = $9, bytes_stored = $10, error = $11 WHERE id = $1",
                params![
                    &run.id,
                    enum_text(&run.status)?,
                    run.level.map(|l| enum_text(&l)).transpose()?,
                    run.started_at,
                    run.finished_at,
                    run.totals.vms,
                    run.totals.vms_ok,
                    run.totals.vms_failed,
                    run.totals.bytes_read,
                    run.totals.bytes_stored,
                    run.error.as_deref()
                ],
            )
            .await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "run", id: run.id.clone() });
        }
        Ok(())
    }

    /// Adds the task, or stores its new state. A VM task's success also becomes the VM's
    /// last success for the run's job (when newer than the one recorded).
    pub async fn save_task(&self, task: &Task) -> Result<()> {
        let mut tx = self.db.begin().await?;
        tx.execute(
            &format!(
                "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                     $13, $14, $15, $16, $17)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, subject = excluded.subject,
                     status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at,
                     bytes_total = excluded.bytes_total, bytes_read = excluded.bytes_read,
                     bytes_stored = excluded.bytes_stored, strategy = excluded.strategy, reason = excluded.reason,
                     warnings = excluded.warnings, errors = excluded.errors, node = excluded.node"
            ),
            params![
                &task.id,
                &task.run_id,
                task.parent_id.as_deref(),
                enum_text(&task.kind)?,
                &task.name,
                task.subject.as_deref(),
                enum_text(&task.status)?,
                task.started_at,
                task.finished_at,
                task.bytes_total,
                task.bytes_read,
                task.bytes_stored,
                task.strategy.as_deref(),
                task.reason.as_deref(),
                to_json(&task.warnings)?,
                to_json(&task.errors)?,
                task.node.as_deref()
            ],
        )
        .await?;
        if let (TaskKind::Vm, TaskStatus::Success, Some(vm_uuid), Some(finished_at)) =
            (task.kind, task.status, &task.subject, task.finished_at)
        {
            tx.execute(
                "INSERT INTO vm_last_success (job_id, vm_uuid, vm_name, run_id, finished_at)
                 SELECT job_id, CAST($2 AS TEXT), CAST($3 AS TEXT), id, CAST($4 AS BIGINT) FROM runs WHERE id = $1
                 ON CONFLICT (job_id, vm_uuid) DO UPDATE SET vm_name = excluded.vm_name, run_id = excluded.run_id,
                 finished_at = excluded.finished_at WHERE excluded.finished_at >= vm_last_success.finished_at",
                params![&task.run_id, vm_uuid, &task.name, finished_at],
            )
            .await?;
        }
        tx.commit().await
    }

    /// Appends a log line to the run (and task); returns its id.
    pub async fn append_log(&self, run_id: &str, task_id: Option<&str>, level: LogLevel, message: &str) -> Result<i64> {
        let row = self
            .db
            .query_one(
                "INSERT INTO task_logs (run_id, task_id, at, level, message) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                params![run_id, task_id, now(), enum_text(&level)?, message],
            )
            .await?;
        row.int(0)
    }

    /// Log lines of the run after `after_id` (all with none), oldest first, at most `limit`.
    pub async fn run_logs(&self, run_id: &str, after_id: Option<i64>, limit: u32) -> Result<Vec<LogLine>> {
        let limit = limit.clamp(1, 10_000);
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT id, run_id, task_id, at, level, message FROM task_logs WHERE run_id = $1 AND id > $2
                     ORDER BY id LIMIT {limit}"
                ),
                params![run_id, after_id.unwrap_or(0)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LogLine {
                    id: row.int(0)?,
                    run_id: row.text(1)?,
                    task_id: row.opt_text(2)?,
                    at: row.time(3)?,
                    level: text_enum(&row.text(4)?)?,
                    message: row.text(5)?,
                })
            })
            .collect()
    }

    pub async fn run(&self, id: &str) -> Result<RunDetail> {
        let mut conn = self.db.conn().await?;
        let run = conn
            .query_opt(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"), params![id])
            .await?
            .ok_or_else(|| Error::NotFound { what: "run", id: id.to_string() })?;
        let tasks = conn
            .query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = $1 ORDER BY seq"), params![id])
            .await?;
        Ok(RunDetail { run: run_row(&run)?, tasks: tasks.iter().map(task_row).collect::<Result<_>>()? })
    }

    pub async fn runs(&self, query: &RunQuery) -> Result<RunPage> {
        let mut filters = Filters::default();
        if let Some(job) = &query.job_id {
            filters.and("job_id = {}", job);
        }
        if let Some(status) = query.status {
            filters.and("status = {}", enum_text(&status)?);
        }
        if let Some(vm) = &query.vm {
            // A UNION, not an OR: each side uses its index.
            filters.and(
                "id IN (SELECT run_id FROM tasks WHERE kind = 'vm' AND subject = {} \
                 UNION SELECT run_id FROM tasks WHERE kind = 'vm' AND name = {})",
                vm,
            );
        }
        if let Some(since) = query.since {
            filters.and("queued_at >= {}", since);
        }
        if let Some(until) = query.until {
            filters.and("queued_at < {}", until);
        }
        let (conditions, values) = filters.into_where();
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        // SQL's OFFSET is a signed 64-bit integer; a larger one is past every row anyway.
        let offset = query.offset.unwrap_or(0).min(i64::MAX as u64);
        let mut conn = self.db.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs{conditions} ORDER BY queued_at DESC, id DESC \
                     LIMIT {limit} OFFSET {offset}"
                ),
                values.clone(),
            )
            .await?;
        let total = conn.query_one(&format!("SELECT COUNT(*) FROM runs{conditions}"), values).await?.uint(0)?;
        Ok(RunPage { runs: rows.iter().map(run_row).collect::<Result<_>>()?, total })
    }

    /// At start-up: runs a stopped server left queued or running become interrupted (now),
    /// and so do their running tasks. Returns those runs, for the caller to clean what they
    /// left behind (tagged snapshots). On a shared catalog only this catalog's owner's runs
    /// ([`Catalog::act_as`]), runs without an owner, and those of owners no longer alive
    /// (heartbeat older than their lease) are taken: another live server's runs are left.
    pub async fn interrupt_unfinished_runs(&self) -> Result<Vec<Run>> {
        let at = now();
        let interrupted = enum_text(&RunStatus::Interrupted)?;
        let mut tx = self.db.begin().await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE {UNFINISHED} AND (owner IS NULL OR owner = $1 OR NOT EXISTS \
                     (SELECT 1 FROM nodes n WHERE n.name = runs.owner AND n.stopped_at IS NULL \
                     AND n.heartbeat_at + n.lease_ms >= $2)) ORDER BY queued_at"
                ),
                params![self.owner(), at],
            )
            .await?;
        let mut runs = rows.iter().map(run_row).collect::<Result<Vec<_>>>()?;
        for run in &mut runs {
            tx.execute(
                "UPDATE runs SET status = $2, finished_at = $3 WHERE id = $1",
                params![&run.id, &interrupted, at],
            )
            .await?;
            tx.execute(
                "UPDATE tasks SET status = $2, finished_at = $3 WHERE run_id = $1 AND status = $4",
                params![&run.id, enum_text(&TaskStatus::Interrupted)?, at, enum_text(&TaskStatus::Running)?],
            )
            .await?;
            tx.execute(
                "UPDATE queue SET state = 'cancelled', finished_at = $2 WHERE run_id = $1 AND state = 'queued'",
                params![&run.id, at],
            )
            .await?;
            run.status = RunStatus::Interrupted;
            run.finished_at = Some(at);
        }
        tx.commit().await?;
        Ok(runs)
    }

    /// Per (job id, schedule id): the latest instant a run was made for, what the
    /// scheduler's catch-up compares with.
    pub async fn last_fired(&self) -> Result<BTreeMap<(String, String), DateTime<Utc>>> {
        let rows = self
            .db
            .query(
                "SELECT job_id, schedule_id, MAX(scheduled_for) FROM runs
                 WHERE schedule_id IS NOT NULL AND scheduled_for IS NOT NULL GROUP BY job_id, schedule_id",
                params![],
            )
            .await?;
        rows.iter().map(|row| Ok(((row.text(0)?, row.text(1)?), row.time(2)?))).collect()
    }

    /// The newest successful backup of each VM by each job (of `job_id` only, if given).
    pub async fn vm_last_successes(&self, job_id: Option<&str>) -> Result<Vec<VmLastSuccess>> {
        let mut filters = Filters::default();
        if let Some(job) = job_id {
            filters.and("job_id = {}", job);
        }
        let (conditions, values) = filters.into_where();
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT vm_uuid, vm_name, job_id, run_id, finished_at FROM vm_last_success{conditions}
                     ORDER BY vm_name, job_id"
                ),
                values,
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(VmLastSuccess {
                    vm_uuid: row.text(0)?,
                    vm_name: row.text(1)?,
                    job_id: row.text(2)?,
                    run_id: row.text(3)?,
                    finished_at: row.time(4)?,
                })
            })
            .collect()
    }
}
