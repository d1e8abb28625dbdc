//! Versioned schema migrations, the same text for both engines (see `db` for the two
//! tokens). A migration is applied once, in one transaction with the version bump; a
//! catalog newer than this build is refused rather than guessed at.

use crate::db::{Db, Engine, params, schema_sql};
use crate::error::{Error, Result};

/// Migration N (1-based) is `MIGRATIONS[N - 1]`. Append only: never edit a released one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    secret {blob},
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE repositories (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    secret {blob},
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    pool TEXT NOT NULL,
    repository TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    schedule_id TEXT,
    parent_run_id TEXT,
    trigger_kind TEXT NOT NULL,
    status TEXT NOT NULL,
    level TEXT,
    scheduled_for BIGINT,
    queued_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    vms BIGINT NOT NULL,
    vms_ok BIGINT NOT NULL,
    vms_failed BIGINT NOT NULL,
    bytes_read BIGINT NOT NULL,
    bytes_stored BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX runs_by_time ON runs (queued_at, id);
CREATE INDEX runs_by_job ON runs (job_id, queued_at);
CREATE INDEX runs_by_status ON runs (status, queued_at);
CREATE TABLE tasks (
    seq {id},
    id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    parent_id TEXT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    subject TEXT,
    status TEXT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    bytes_total BIGINT,
    bytes_read BIGINT NOT NULL,
    bytes_stored BIGINT NOT NULL,
    strategy TEXT,
    reason TEXT,
    warnings TEXT NOT NULL,
    errors TEXT NOT NULL
);
CREATE INDEX tasks_by_run ON tasks (run_id, seq);
CREATE INDEX tasks_by_subject ON tasks (kind, subject);
CREATE INDEX tasks_by_name ON tasks (kind, name);
CREATE TABLE vm_last_success (
    job_id TEXT NOT NULL,
    vm_uuid TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    finished_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, vm_uuid)
);
CREATE TABLE task_logs (
    id {id},
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id TEXT,
    at BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX task_logs_by_run ON task_logs (run_id, id);
CREATE TABLE restore_points (
    repository TEXT NOT NULL,
    point_id TEXT NOT NULL,
    vm_uuid TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    job_id TEXT,
    run_id TEXT,
    schedule_id TEXT,
    created_at BIGINT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (repository, point_id)
);
CREATE INDEX restore_points_by_vm ON restore_points (vm_uuid, created_at);
CREATE INDEX restore_points_by_vm_name ON restore_points (vm_name, created_at);
CREATE INDEX restore_points_by_job ON restore_points (job_id, created_at);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT
);
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_name);
CREATE TABLE audit_log (
    id {id},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
CREATE INDEX audit_log_by_time ON audit_log (at);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    secret {blob},
    updated_at BIGINT NOT NULL
);
"#,
    r#"
CREATE TABLE restores (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    repository TEXT NOT NULL,
    restore_point TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    request TEXT NOT NULL,
    progress TEXT NOT NULL,
    report TEXT,
    error TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX restores_by_time ON restores (started_at);
CREATE INDEX restores_by_status ON restores (status);
"#,
    // Scale-out (queue.rs): the node that ran a VM task, the nodes, the VM-task queue and
    // its concurrency limits.
    r#"
ALTER TABLE tasks ADD COLUMN node TEXT;
ALTER TABLE runs ADD COLUMN owner TEXT;
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    concurrency BIGINT NOT NULL,
    lease_ms BIGINT NOT NULL,
    affinity TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT
);
CREATE TABLE queue (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    parent_task_id TEXT NOT NULL,
    vm_uuid TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    pool TEXT NOT NULL,
    host TEXT NOT NULL,
    srs TEXT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    lost_by TEXT,
    queued_at BIGINT NOT NULL,
    taken_at BIGINT,
    finished_at BIGINT,
    UNIQUE (run_id, vm_uuid)
);
CREATE INDEX queue_by_state ON queue (state, queued_at, position);
CREATE INDEX queue_by_owner ON queue (lease_owner);
CREATE TABLE queue_limits (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    max_running BIGINT NOT NULL,
    PRIMARY KEY (scope, name)
);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema to [`SCHEMA_VERSION`]. Safe when several processes start at once:
/// each migration runs in a transaction that first re-reads the version.
pub(crate) async fn migrate(db: &Db) -> Result<()> {
    let engine = db.engine().await;
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)", params![]).await?;
    loop {
        let mut tx = db.begin().await?;
        if engine == Engine::Postgres {
            // Serialises concurrent migrators (SQLite's BEGIN IMMEDIATE already does).
            tx.batch("LOCK TABLE schema_version IN EXCLUSIVE MODE").await?;
        }
        let current = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", params![]).await?.int(0)?;
        if current > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew { found: current, known: SCHEMA_VERSION });
        }
        if current == SCHEMA_VERSION {
            // Ends the transaction now: PostgreSQL would keep the table lock (and other
            // servers' migrations waiting) until this catalog's next statement.
            return tx.commit().await;
        }
        let index = usize::try_from(current).map_err(|_| Error::Corrupt(format!("schema version {current}")))?;
        tx.batch(&schema_sql(engine, MIGRATIONS[index])).await?;
        tx.execute("DELETE FROM schema_version", params![]).await?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", params![current + 1]).await?;
        tx.commit().await?;
    }
}
