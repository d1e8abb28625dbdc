//! The audit log: who did what to which object, and when. Append only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::{Filters, params};
use crate::error::Result;
use crate::{Catalog, now};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The user, or the API token's name and prefix.
    pub actor: String,
    /// e.g. "job.create", "run.cancel", "login.failed".
    pub action: String,
    /// The object acted on (a job id, a pool name, ...).
    pub target: Option<String>,
    /// More about it (never a secret).
    pub detail: Option<String>,
}

/// Newest first; `before_id` pages back from an entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

impl Catalog {
    pub async fn audit(&self, actor: &str, action: &str, target: Option<&str>, detail: Option<&str>) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
                params![now(), actor, action, target, detail],
            )
            .await
            .map(drop)
    }

    pub async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut filters = Filters::default();
        if let Some(actor) = &query.actor {
            filters.and("actor = {}", actor);
        }
        if let Some(action) = &query.action {
            filters.and("action = {}", action);
        }
        if let Some(since) = query.since {
            filters.and("at >= {}", since);
        }
        if let Some(before) = query.before_id {
            filters.and("id < {}", before);
        }
        let (conditions, values) = filters.into_where();
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        let sql = format!(
            "SELECT id, at, actor, action, target, detail FROM audit_log{conditions} ORDER BY id DESC LIMIT {limit}"
        );
        let rows = self.db.query(&sql, values).await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.int(0)?,
                    at: row.time(1)?,
                    actor: row.text(2)?,
                    action: row.text(3)?,
                    target: row.opt_text(4)?,
                    detail: row.opt_text(5)?,
                })
            })
            .collect()
    }
}
