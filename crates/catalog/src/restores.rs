//! Restores the API started (a VM, a disk, files): what was asked, by whom, how far it
//! got, and its report or error, kept in a table of their own so they stay in the history
//! after the server stops. A restore a crash left running is marked interrupted at start.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::{Filters, Row, params};
use crate::error::{Error, Result};
use crate::{Catalog, enum_text, now, text_enum, to_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestoreKind {
    Vm,
    Disk,
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestoreStatus {
    Running,
    Success,
    Failed,
    /// Stopped on request; what it had created in the pool was removed.
    Cancelled,
    /// The server stopped (or crashed) while it ran.
    Interrupted,
}

impl RestoreStatus {
    pub fn is_finished(self) -> bool {
        self != RestoreStatus::Running
    }
}

/// How far one piece of work got: a disk read into the repository, written to the pool, files extracted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkProgress {
    pub label: String,
    pub vm: Option<String>,
    pub disk: Option<u32>,
    /// restore, compare, export, ...
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub finished: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Restore {
    /// Given by [`Catalog::create_restore`].
    pub id: String,
    pub kind: RestoreKind,
    pub status: RestoreStatus,
    /// The repository's registered name.
    pub repository: String,
    pub restore_point: String,
    /// Who started it, as the audit log names them.
    pub requested_by: String,
    /// The request as it was accepted (it holds no secret).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub progress: Vec<WorkProgress>,
    /// What the restore did (the library's report), once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Newest first; every filter optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RestoreQuery {
    pub status: Option<RestoreStatus>,
    pub kind: Option<RestoreKind>,
    pub repository: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestorePage {
    pub restores: Vec<Restore>,
    /// Restores matching the filters, over all pages.
    pub total: u64,
}

const COLUMNS: &str = "id, kind, status, repository, restore_point, requested_by, request, progress, report, error, \
                       started_at, finished_at";

fn restore_row(row: &Row) -> Result<Restore> {
    Ok(Restore {
        id: row.text(0)?,
        kind: text_enum(&row.text(1)?)?,
        status: text_enum(&row.text(2)?)?,
        repository: row.text(3)?,
        restore_point: row.text(4)?,
        requested_by: row.text(5)?,
        request: row.json(6)?,
        progress: row.json(7)?,
        report: row.opt_text(8)?.map(|text| parse_json(&text)).transpose()?,
        error: row.opt_text(9)?,
        started_at: row.time(10)?,
        finished_at: row.opt_time(11)?,
    })
}

fn parse_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored restore report: {e}")))
}

impl Catalog {
    /// Records a restore that starts now; returns it with its id.
    pub async fn create_restore(&self, mut restore: Restore) -> Result<Restore> {
        restore.id = uuid::Uuid::new_v4().to_string();
        restore.started_at = now();
        self.db
            .execute(
                &format!("INSERT INTO restores ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
                params![
                    &restore.id,
                    enum_text(&restore.kind)?,
                    enum_text(&restore.status)?,
                    &restore.repository,
                    &restore.restore_point,
                    &restore.requested_by,
                    to_json(&restore.request)?,
                    to_json(&restore.progress)?,
                    restore.report.as_ref().map(to_json).transpose()?,
                    restore.error.as_deref(),
                    restore.started_at,
                    restore.finished_at
                ],
            )
            .await?;
        Ok(restore)
    }

    /// Saves a restore's status, progress, report, error and end.
    pub async fn update_restore(&self, restore: &Restore) -> Result<()> {
        let changed = self
            .db
            .execute(
                "UPDATE restores SET status = $2, progress = $3, report = $4, error = $5, finished_at = $6 WHERE id = $1",
                params![
                    &restore.id,
                    enum_text(&restore.status)?,
                    to_json(&restore.progress)?,
                    restore.report.as_ref().map(to_json).transpose()?,
                    restore.error.as_deref(),
                    restore.finished_at
                ],
            )
            .await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "restore", id: restore.id.clone() });
        }
        Ok(())
    }

    pub async fn restore(&self, id: &str) -> Result<Restore> {
        let row = self.db.query_opt(&format!("SELECT {COLUMNS} FROM restores WHERE id = $1"), params![id]).await?;
        restore_row(&row.ok_or_else(|| Error::NotFound { what: "restore", id: id.to_string() })?)
    }

    pub async fn restores(&self, query: &RestoreQuery) -> Result<RestorePage> {
        let mut filters = Filters::default();
        if let Some(status) = &query.status {
            filters.and("status = {}", enum_text(status)?);
        }
        if let Some(kind) = &query.kind {
            filters.and("kind = {}", enum_text(kind)?);
        }
        if let Some(repository) = &query.repository {
            filters.and("repository = {}", repository);
        }
        let (conditions, values) = filters.into_where();
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        // SQL's OFFSET is a signed 64-bit integer; a larger one is past every row anyway.
        let offset = query.offset.unwrap_or(0).min(i64::MAX as u64);
        let mut conn = self.db.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM restores{conditions} ORDER BY started_at DESC, id LIMIT {limit} OFFSET {offset}"
                ),
                values.clone(),
            )
            .await?;
        let total = conn.query_one(&format!("SELECT COUNT(*) FROM restores{conditions}"), values).await?.uint(0)?;
        Ok(RestorePage { restores: rows.iter().map(restore_row).collect::<Result<_>>()?, total })
    }

    /// Marks the restores the last server stop left running as interrupted; returns them.
    pub async fn interrupt_unfinished_restores(&self) -> Result<Vec<Restore>> {
        let at = now();
        let running = enum_text(&RestoreStatus::Running)?;
        let mut tx = self.db.begin().await?;
        let rows = tx.query(&format!("SELECT {COLUMNS} FROM restores WHERE status = $1"), params![&running]).await?;
        let mut restores = rows.iter().map(restore_row).collect::<Result<Vec<_>>>()?;
        tx.execute(
            "UPDATE restores SET status = $2, finished_at = $3 WHERE status = $1",
            params![&running, enum_text(&RestoreStatus::Interrupted)?, at],
        )
        .await?;
        tx.commit().await?;
        for restore in &mut restores {
            restore.status = RestoreStatus::Interrupted;
            restore.finished_at = Some(at);
        }
        Ok(restores)
    }
}
