//! The scale-out work queue: the VM-level tasks of runs planned for several backup nodes,
//! the nodes themselves (registry and heartbeats) and the limits on how many VMs of one
//! pool, host or SR are backed up (snapshotted) at once.
//!
//! A task is `queued`, then `leased` by one node until its lease expires (the node renews
//! the leases of everything it holds on each heartbeat), then `done`, `failed` or
//! `cancelled`. A lease that expires (its node died or lost the catalog) puts the task back
//! in the queue with `lost_by` naming that node, for the next taker to clean what it left
//! on the pool. Finishing a task is fenced by the lease: a node whose lease was taken over
//! cannot overwrite the new holder's result.
//!
//! Taking is one transaction: expired leases are re-queued, then the oldest queued tasks
//! the node may take (its affinity) are locked with `FOR UPDATE SKIP LOCKED` on PostgreSQL,
//! so concurrent takers never wait for each other's rows; SQLite's single writer
//! (`BEGIN IMMEDIATE`) gives the same exclusion. When limits are set, takers serialise on
//! the limit rows (`FOR UPDATE`) so that two nodes never both take the last free slot of a
//! pool, host or SR.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use xenvault_jobs::model::{RunStatus, TaskStatus};

use crate::db::{Engine, Row, Value, params};
use crate::error::{Error, Result};
use crate::{Catalog, enum_text, now, to_json};

/// How many times a VM task is handed out before it fails for good: a VM that takes its
/// node down each time must not take the whole fleet down one node after the other.
pub const MAX_ATTEMPTS: u32 = 3;

/// Which VMs a node takes: those of a pool, or those on a host (the LAN-free case). A node
/// with no affinity takes any VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// A pool's registered name.
    Pool(String),
    /// A host's name label or uuid.
    Host(String),
}

impl std::str::FromStr for Affinity {
    type Err = String;

    /// `pool=NAME` or `host=NAME`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.split_once('=') {
            Some(("pool", name)) if !name.is_empty() => Ok(Affinity::Pool(name.to_owned())),
            Some(("host", name)) if !name.is_empty() => Ok(Affinity::Host(name.to_owned())),
            _ => Err(format!("affinity {text:?}: expected pool=NAME or host=NAME")),
        }
    }
}

/// A node as it registers: its name, how many VMs it backs up at once, how long its leases
/// last without a heartbeat, and which VMs it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub concurrency: u32,
    pub lease: Duration,
    pub affinity: Vec<Affinity>,
}

/// A registered node and whether it is alive (heartbeat within its lease, not stopped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub name: String,
    pub concurrency: u32,
    pub lease_secs: f64,
    pub affinity: Vec<Affinity>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub alive: bool,
}

/// One VM of a planned run: where it is (for affinity and limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVm {
    pub vm_uuid: String,
    pub vm_name: String,
    /// The pool's registered name.
    pub pool: String,
    /// The host it runs on (or has affinity to), by name label; empty when none.
    pub host: String,
    /// The uuids of the SRs its disks are on.
    pub srs: Vec<String>,
}

/// A task as a node takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask {
    pub id: String,
    pub run_id: String,
    /// The run's root task: the VM's task goes under it.
    pub parent_task_id: String,
    pub vm: PlannedVm,
    /// This hand-out included (1 the first time).
    pub attempts: u32,
    /// The node whose lease on this task expired before, if any: what it left is to clean.
    pub lost_by: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub taken_at: DateTime<Utc>,
}

/// What limits the concurrent VM backups of one pool, host or SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    Pool,
    Host,
    Sr,
}

/// How a taken task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    Done,
    Failed,
}

/// A run's tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueCounts {
    pub queued: u64,
    pub leased: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl QueueCounts {
    /// Nothing left to hand out or to wait for.
    pub fn settled(&self) -> bool {
        self.queued == 0 && self.leased == 0
    }
}

const QUEUED: &str = "queued";
const LEASED: &str = "leased";

const TASK_COLUMNS: &str =
    "id, run_id, parent_task_id, vm_uuid, vm_name, pool, host, srs, attempts, lost_by, queued_at, taken_at";

fn queued_task(row: &Row) -> Result<QueuedTask> {
    Ok(QueuedTask {
        id: row.text(0)?,
        run_id: row.text(1)?,
        parent_task_id: row.text(2)?,
        vm: PlannedVm {
            vm_uuid: row.text(3)?,
            vm_name: row.text(4)?,
            pool: row.text(5)?,
            host: row.text(6)?,
            srs: row.json(7)?,
        },
        attempts: u32::try_from(row.int(8)?).map_err(|_| Error::Corrupt("queue attempts out of range".into()))?,
        lost_by: row.opt_text(9)?,
        queued_at: row.time(10)?,
        taken_at: row.opt_time(11)?.unwrap_or_else(now),
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn later(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    at + chrono::Duration::milliseconds(millis(duration))
}

/// Concurrent VM backups per (scope, name): those leased now, against the limits.
struct Slots {
    limits: HashMap<(LimitScope, String), u64>,
    running: HashMap<(LimitScope, String), u64>,
}

impl Slots {
    fn keys(vm: &PlannedVm) -> Vec<(LimitScope, String)> {
        let mut keys = vec![(LimitScope::Pool, vm.pool.clone()), (LimitScope::Host, vm.host.clone())];
        keys.extend(vm.srs.iter().map(|sr| (LimitScope::Sr, sr.clone())));
        keys
    }

    /// Takes a slot of each limit the VM falls under; false (and nothing taken) when one is full.
    fn take(&mut self, vm: &PlannedVm) -> bool {
        let keys = Self::keys(vm);
        let full = keys
            .iter()
            .any(|key| self.limits.get(key).is_some_and(|max| self.running.get(key).copied().unwrap_or(0) >= *max));
        if !full {
            for key in keys {
                *self.running.entry(key).or_default() += 1;
            }
        }
        !full
    }
}

impl Catalog {
    /// Registers `node` (again after a restart): alive from now, with its settings.
    pub async fn register_node(&self, node: &NodeInfo) -> Result<()> {
        if node.name.is_empty() {
            return Err(Error::Invalid("a node needs a name".into()));
        }
        let at = now();
        self.db
            .execute(
                "INSERT INTO nodes (name, concurrency, lease_ms, affinity, started_at, heartbeat_at, stopped_at)
                 VALUES ($1, $2, $3, $4, $5, $5, NULL)
                 ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, lease_ms = excluded.lease_ms,
                 affinity = excluded.affinity, started_at = excluded.started_at,
                 heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
                params![&node.name, node.concurrency, millis(node.lease), to_json(&node.affinity)?, at],
            )
            .await?;
        Ok(())
    }

    /// The node is alive: its heartbeat and the leases of every task it holds are renewed.
    /// Returns the ids of the tasks it still holds (a task missing was lost: its lease
    /// expired and another node may run it now, so the caller must stop working on it).
    pub async fn heartbeat(&self, node: &str, lease: Duration) -> Result<Vec<String>> {
        let at = now();
        let mut tx = self.db.begin().await?;
        let changed = tx.execute("UPDATE nodes SET heartbeat_at = $2 WHERE name = $1", params![node, at]).await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "node", id: node.to_owned() });
        }
        tx.execute(
            "UPDATE queue SET lease_expires_at = $3 WHERE lease_owner = $1 AND state = $2",
            params![node, LEASED, later(at, lease)],
        )
        .await?;
        let held = tx
            .query("SELECT id FROM queue WHERE lease_owner = $1 AND state = $2", params![node, LEASED])
            .await?
            .iter()
            .map(|row| row.text(0))
            .collect::<Result<_>>()?;
        tx.commit().await?;
        Ok(held)
    }

    /// A node stopping cleanly: marked stopped, and the tasks it still holds are queued
    /// again at once (lost by it) rather than when their leases expire.
    pub async fn node_stopped(&self, node: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        tx.execute("UPDATE nodes SET stopped_at = $2 WHERE name = $1", params![node, now()]).await?;
        tx.execute(
            "UPDATE queue SET state = $2, lost_by = lease_owner, lease_owner = NULL, lease_expires_at = NULL
             WHERE lease_owner = $1 AND state = $3",
            params![node, QUEUED, LEASED],
        )
        .await?;
        tx.commit().await
    }

    /// Every registered node, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        let at = now();
        let rows = self
            .db
            .query(
                "SELECT name, concurrency, lease_ms, affinity, started_at, heartbeat_at, stopped_at FROM nodes
                 ORDER BY name",
                params![],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let lease_ms = row.int(2)?;
                let heartbeat_at = row.time(5)?;
                let stopped_at = row.opt_time(6)?;
                Ok(NodeStatus {
                    name: row.text(0)?,
                    concurrency: u32::try_from(row.int(1)?).unwrap_or(0),
                    lease_secs: lease_ms as f64 / 1000.0,
                    affinity: row.json(3)?,
                    started_at: row.time(4)?,
                    heartbeat_at,
                    stopped_at,
                    alive: stopped_at.is_none() && heartbeat_at + chrono::Duration::milliseconds(lease_ms) >= at,
                })
            })
            .collect()
    }

    /// At most `max` VMs of `scope` `name` backed up at once across all nodes; none lifts
    /// the limit.
    pub async fn set_queue_limit(&self, scope: LimitScope, name: &str, max: Option<u32>) -> Result<()> {
        let scope = enum_text(&scope)?;
        match max {
            Some(max) => {
                self.db
                    .execute(
                        "INSERT INTO queue_limits (scope, name, max_running) VALUES ($1, $2, $3)
                         ON CONFLICT (scope, name) DO UPDATE SET max_running = excluded.max_running",
                        params![scope, name, max],
                    )
                    .await?
            }
            None => {
                self.db.execute("DELETE FROM queue_limits WHERE scope = $1 AND name = $2", params![scope, name]).await?
            }
        };
        Ok(())
    }

    /// Queues one task per VM of run `run_id`, under its root task, handed out in this
    /// order; a VM already queued for the run is refused (a conflict): each VM once per run.
    pub async fn enqueue(&self, run_id: &str, parent_task_id: &str, vms: &[PlannedVm]) -> Result<()> {
        let at = now();
        let mut tx = self.db.begin().await?;
        for (position, vm) in vms.iter().enumerate() {
            tx.execute(
                "INSERT INTO queue (id, run_id, parent_task_id, vm_uuid, vm_name, pool, host, srs, position, state,
                 attempts, queued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11)",
                params![
                    uuid::Uuid::new_v4().to_string(),
                    run_id,
                    parent_task_id,
                    &vm.vm_uuid,
                    &vm.vm_name,
                    &vm.pool,
                    &vm.host,
                    to_json(&vm.srs)?,
                    position as u64,
                    QUEUED,
                    at
                ],
            )
            .await?;
        }
        tx.commit().await
    }

    /// Hands `node` up to `max` tasks: the oldest queued ones its affinity allows and the
    /// limits leave room for, leased until now + its lease. Expired leases are re-queued
    /// first (or failed after [`MAX_ATTEMPTS`] hand-outs).
    pub async fn take_tasks(&self, node: &NodeInfo, max: usize) -> Result<Vec<QueuedTask>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let engine = self.db.engine().await;
        let at = now();
        let mut tx = self.db.begin().await?;
        tx.execute(
            "UPDATE queue SET state = CASE WHEN attempts >= $3 THEN 'failed' ELSE $1 END, lost_by = lease_owner,
             lease_owner = NULL, lease_expires_at = NULL, finished_at = CASE WHEN attempts >= $3 THEN $4 END
             WHERE state = $2 AND lease_expires_at < $4",
            params![QUEUED, LEASED, MAX_ATTEMPTS, at],
        )
        .await?;
        let lock_rows = if engine == Engine::Postgres { " FOR UPDATE" } else { "" };
        let limits =
            tx.query(&format!("SELECT scope, name, max_running FROM queue_limits{lock_rows}"), params![]).await?;
        let mut slots = Slots { limits: HashMap::new(), running: HashMap::new() };
        for row in &limits {
            let scope: LimitScope = crate::text_enum(&row.text(0)?)?;
            slots.limits.insert((scope, row.text(1)?), row.uint(2)?);
        }
        if !slots.limits.is_empty() {
            for row in tx.query("SELECT pool, host, srs FROM queue WHERE state = $1", params![LEASED]).await? {
                let vm = PlannedVm {
                    vm_uuid: String::new(),
                    vm_name: String::new(),
                    pool: row.text(0)?,
                    host: row.text(1)?,
                    srs: row.json(2)?,
                };
                for key in Slots::keys(&vm) {
                    *slots.running.entry(key).or_default() += 1;
                }
            }
        }
        // Candidates beyond `max`: some may be over a limit.
        let candidates = if slots.limits.is_empty() { max } else { max * 4 + 16 };
        let mut values: Vec<Value> = params![QUEUED];
        let mut affinity = Vec::new();
        for a in &node.affinity {
            let (column, name) = match a {
                Affinity::Pool(name) => ("pool", name),
                Affinity::Host(name) => ("host", name),
            };
            values.push(name.into());
            affinity.push(format!("{column} = ${}", values.len()));
        }
        let affinity = if affinity.is_empty() { String::new() } else { format!(" AND ({})", affinity.join(" OR ")) };
        let skip_locked = if engine == Engine::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let rows = tx
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM queue WHERE state = $1{affinity} ORDER BY queued_at, position \
                     LIMIT {candidates}{skip_locked}"
                ),
                values,
            )
            .await?;
        let mut taken = Vec::new();
        for row in &rows {
            let mut task = queued_task(row)?;
            if taken.len() == max || !slots.take(&task.vm) {
                continue;
            }
            tx.execute(
                "UPDATE queue SET state = $2, lease_owner = $3, lease_expires_at = $4, taken_at = $5,
                 attempts = attempts + 1 WHERE id = $1",
                params![&task.id, LEASED, &node.name, later(at, node.lease), at],
            )
            .await?;
            task.attempts += 1;
            task.taken_at = at;
            taken.push(task);
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// Records how task `id` ended, if `node` still holds its lease; false when it does
    /// not (its lease expired and the task went back to the queue or to another node).
    pub async fn finish_task(&self, id: &str, node: &str, end: TaskEnd) -> Result<bool> {
        let state = match end {
            TaskEnd::Done => "done",
            TaskEnd::Failed => "failed",
        };
        let changed = self
            .db
            .execute(
                "UPDATE queue SET state = $3, lease_owner = NULL, lease_expires_at = NULL, finished_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND state = $5",
                params![id, node, state, now(), LEASED],
            )
            .await?;
        Ok(changed == 1)
    }

    /// How many of run `run_id`'s tasks are in each state.
    pub async fn queue_counts(&self, run_id: &str) -> Result<QueueCounts> {
        let rows = self
            .db
            .query("SELECT state, COUNT(*) FROM queue WHERE run_id = $1 GROUP BY state", params![run_id])
            .await?;
        let mut counts = QueueCounts::default();
        for row in rows {
            let n = row.uint(1)?;
            match row.text(0)?.as_str() {
                "queued" => counts.queued = n,
                "leased" => counts.leased = n,
                "done" => counts.done = n,
                "failed" => counts.failed = n,
                "cancelled" => counts.cancelled = n,
                other => return Err(Error::Corrupt(format!("queue state {other:?}"))),
            }
        }
        Ok(counts)
    }

    /// The tasks of run `run_id` that failed for good without a node recording the VM's
    /// result (their leases expired [`MAX_ATTEMPTS`] times): VM uuid and name.
    pub async fn lost_tasks(&self, run_id: &str) -> Result<Vec<(String, String)>> {
        let rows = self
            .db
            .query(
                "SELECT q.vm_uuid, q.vm_name FROM queue q WHERE q.run_id = $1 AND q.state = 'failed'
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = q.run_id AND t.kind = 'vm'
                 AND t.subject = q.vm_uuid AND t.status <> $2) ORDER BY q.vm_name",
                params![run_id, enum_text(&TaskStatus::Running)?],
            )
            .await?;
        rows.iter().map(|row| Ok((row.text(0)?, row.text(1)?))).collect()
    }

    /// A run being cancelled: its queued tasks are not handed out any more, and those
    /// leased are no longer held (their nodes stop them at their next heartbeat).
    pub async fn cancel_run_tasks(&self, run_id: &str) -> Result<u64> {
        self.db
            .execute(
                "UPDATE queue SET state = 'cancelled', finished_at = $4 WHERE run_id = $1 AND state IN ($2, $3)",
                params![run_id, QUEUED, LEASED, now()],
            )
            .await
    }

    /// The VM tasks of VM `vm_uuid` in run `run_id` left running by a node that was lost
    /// become interrupted (the VM is backed up again as a new task).
    pub async fn interrupt_vm_tasks(&self, run_id: &str, vm_uuid: &str) -> Result<u64> {
        self.db
            .execute(
                "UPDATE tasks SET status = $3, finished_at = $4 WHERE run_id = $1 AND kind = 'vm' AND subject = $2
                 AND status = $5",
                params![run_id, vm_uuid, enum_text(&TaskStatus::Interrupted)?, now(), enum_text(&TaskStatus::Running)?],
            )
            .await
    }

    /// Whether run `run_id` is still queued or running (a node stops a VM of a run that
    /// was cancelled or interrupted meanwhile).
    pub async fn run_is_going(&self, run_id: &str) -> Result<bool> {
        let row = self.db.query_opt("SELECT status FROM runs WHERE id = $1", params![run_id]).await?;
        let Some(row) = row else { return Ok(false) };
        let status: RunStatus = crate::text_enum(&row.text(0)?)?;
        Ok(!status.is_finished())
    }

    /// Names `owner` (a server or node, registered in the node table) as the one that
    /// plans and finishes run `run_id`: a restart of another server sharing the catalog
    /// leaves the run alone while its owner heartbeats.
    pub async fn set_run_owner(&self, run_id: &str, owner: &str) -> Result<()> {
        let changed = self.db.execute("UPDATE runs SET owner = $2 WHERE id = $1", params![run_id, owner]).await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "run", id: run_id.to_owned() });
        }
        Ok(())
    }
}
