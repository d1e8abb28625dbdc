//! An index of the restore points in the server's repositories, so the API lists them per
//! VM or per job without opening every repository. The repositories stay the truth:
//! [`Catalog::sync_restore_points`] replaces a repository's entries with its listing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Catalog;
use crate::db::{Conn, Filters, Row, params};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestorePointEntry {
    /// The repository's name as registered with the server.
    pub repository: String,
    pub point_id: String,
    pub vm_uuid: String,
    pub vm_name: String,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub schedule_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Bytes of the VM's disks.
    pub size: u64,
}

/// Newest first. `vm` matches the uuid or the name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RestorePointQuery {
    pub repository: Option<String>,
    pub vm: Option<String>,
    pub job_id: Option<String>,
    pub schedule_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

const COLUMNS: &str = "repository, point_id, vm_uuid, vm_name, job_id, run_id, schedule_id, created_at, size";

fn entry_row(row: &Row) -> Result<RestorePointEntry> {
    Ok(RestorePointEntry {
        repository: row.text(0)?,
        point_id: row.text(1)?,
        vm_uuid: row.text(2)?,
        vm_name: row.text(3)?,
        job_id: row.opt_text(4)?,
        run_id: row.opt_text(5)?,
        schedule_id: row.opt_text(6)?,
        created_at: row.time(7)?,
        size: row.uint(8)?,
    })
}

async fn upsert(conn: &mut Conn<'_>, entry: &RestorePointEntry) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO restore_points ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (repository, point_id) DO UPDATE SET vm_uuid = excluded.vm_uuid,
             vm_name = excluded.vm_name, job_id = excluded.job_id, run_id = excluded.run_id,
             schedule_id = excluded.schedule_id, created_at = excluded.created_at, size = excluded.size"
        ),
        params![
            &entry.repository,
            &entry.point_id,
            &entry.vm_uuid,
            &entry.vm_name,
            entry.job_id.as_deref(),
            entry.run_id.as_deref(),
            entry.schedule_id.as_deref(),
            entry.created_at,
            entry.size
        ],
    )
    .await
    .map(drop)
}

impl Catalog {
    /// Adds (or updates) the entry of a restore point just committed.
    pub async fn index_restore_point(&self, entry: &RestorePointEntry) -> Result<()> {
        upsert(&mut self.db.conn().await?, entry).await
    }

    /// Drops the entries of restore points that retention or a forget removed.
    pub async fn unindex_restore_points(&self, repository: &str, point_ids: &[String]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for id in point_ids {
            tx.execute("DELETE FROM restore_points WHERE repository = $1 AND point_id = $2", params![repository, id])
                .await?;
        }
        tx.commit().await
    }

    /// Makes the index of `repository` exactly `entries` (its current listing).
    pub async fn sync_restore_points(&self, repository: &str, entries: &[RestorePointEntry]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        tx.execute("DELETE FROM restore_points WHERE repository = $1", params![repository]).await?;
        for entry in entries {
            upsert(&mut tx, entry).await?;
        }
        tx.commit().await
    }

    /// The newest restore point of each VM (by uuid), over every repository: one query for
    /// the protection overview, however many VMs.
    pub async fn newest_restore_points(&self) -> Result<HashMap<String, RestorePointEntry>> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM restore_points newest WHERE created_at =
                     (SELECT MAX(created_at) FROM restore_points other WHERE other.vm_uuid = newest.vm_uuid)"
                ),
                params![],
            )
            .await?;
        let mut newest = HashMap::new();
        for entry in rows.iter().map(entry_row) {
            let entry = entry?;
            newest.insert(entry.vm_uuid.clone(), entry);
        }
        Ok(newest)
    }

    pub async fn restore_points(&self, query: &RestorePointQuery) -> Result<Vec<RestorePointEntry>> {
        let mut filters = Filters::default();
        if let Some(repository) = &query.repository {
            filters.and("repository = {}", repository);
        }
        if let Some(vm) = &query.vm {
            filters.and("(vm_uuid = {} OR vm_name = {})", vm);
        }
        if let Some(job) = &query.job_id {
            filters.and("job_id = {}", job);
        }
        if let Some(schedule) = &query.schedule_id {
            filters.and("schedule_id = {}", schedule);
        }
        if let Some(since) = query.since {
            filters.and("created_at >= {}", since);
        }
        if let Some(until) = query.until {
            filters.and("created_at < {}", until);
        }
        let (conditions, values) = filters.into_where();
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        // SQL's OFFSET is a signed 64-bit integer; a larger one is past every row anyway.
        let offset = query.offset.unwrap_or(0).min(i64::MAX as u64);
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM restore_points{conditions}
                     ORDER BY created_at DESC, point_id LIMIT {limit} OFFSET {offset}"
                ),
                values,
            )
            .await?;
        rows.iter().map(entry_row).collect()
    }
}
