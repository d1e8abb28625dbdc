//! Pools and repositories the server connects to: settings the caller types (URL, user,
//! TLS trust; backend options) stored as JSON, and one secret each (pool password,
//! repository passphrase) sealed with the data directory's key. Listings say whether a
//! secret is stored, never what it is.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::{Row, params};
use crate::error::{Error, Result};
use crate::{Catalog, now, to_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    Pool,
    Repository,
}

impl ConnectionKind {
    fn table(self) -> &'static str {
        match self {
            ConnectionKind::Pool => "pools",
            ConnectionKind::Repository => "repositories",
        }
    }

    fn job_column(self) -> &'static str {
        match self {
            ConnectionKind::Pool => "pool",
            ConnectionKind::Repository => "repository",
        }
    }

    fn what(self) -> &'static str {
        match self {
            ConnectionKind::Pool => "pool",
            ConnectionKind::Repository => "repository",
        }
    }

    /// Associated data of the sealed secret: it opens only for this row.
    fn secret_context(self, name: &str) -> String {
        format!("{}:{name}", self.what())
    }
}

/// A stored pool or repository, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Connection<T> {
    pub name: String,
    pub settings: T,
    pub has_secret: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn connection_row<T: DeserializeOwned>(row: &Row) -> Result<Connection<T>> {
    Ok(Connection {
        name: row.text(0)?,
        settings: row.json(1)?,
        has_secret: row.bool(2)?,
        created_at: row.time(3)?,
        updated_at: row.time(4)?,
    })
}

const COLUMNS: &str = "name, settings, CASE WHEN secret IS NULL THEN 0 ELSE 1 END, created_at, updated_at";

impl Catalog {
    pub async fn add_connection<T: Serialize>(
        &self,
        kind: ConnectionKind,
        name: &str,
        settings: &T,
        secret: Option<&str>,
    ) -> Result<()> {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!("{} name {name:?}: printable characters, not empty", kind.what())));
        }
        let sealed = secret.map(|s| self.key.seal(&kind.secret_context(name), s)).transpose()?;
        let at = now();
        let inserted = self
            .db
            .execute(
                &format!(
                    "INSERT INTO {} (name, settings, secret, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (name) DO NOTHING",
                    kind.table()
                ),
                params![name, to_json(settings)?, sealed, at],
            )
            .await?;
        if inserted == 0 {
            return Err(Error::Conflict(format!("{} {name:?} already exists", kind.what())));
        }
        Ok(())
    }

    /// Replaces the settings; `secret` none keeps the stored one.
    pub async fn update_connection<T: Serialize>(
        &self,
        kind: ConnectionKind,
        name: &str,
        settings: &T,
        secret: Option<&str>,
    ) -> Result<()> {
        let settings = to_json(settings)?;
        let changed = match secret {
            Some(secret) => {
                let sealed = self.key.seal(&kind.secret_context(name), secret)?;
                self.db
                    .execute(
                        &format!(
                            "UPDATE {} SET settings = $2, secret = $3, updated_at = $4 WHERE name = $1",
                            kind.table()
                        ),
                        params![name, settings, sealed, now()],
                    )
                    .await?
            }
            None => {
                self.db
                    .execute(
                        &format!("UPDATE {} SET settings = $2, updated_at = $3 WHERE name = $1", kind.table()),
                        params![name, settings, now()],
                    )
                    .await?
            }
        };
        if changed == 0 {
            return Err(Error::NotFound { what: kind.what(), id: name.to_string() });
        }
        Ok(())
    }

    pub async fn connections<T: DeserializeOwned>(&self, kind: ConnectionKind) -> Result<Vec<Connection<T>>> {
        let rows = self.db.query(&format!("SELECT {COLUMNS} FROM {} ORDER BY name", kind.table()), params![]).await?;
        rows.iter().map(connection_row).collect()
    }

    pub async fn connection<T: DeserializeOwned>(&self, kind: ConnectionKind, name: &str) -> Result<Connection<T>> {
        let row = self
            .db
            .query_opt(&format!("SELECT {COLUMNS} FROM {} WHERE name = $1", kind.table()), params![name])
            .await?
            .ok_or_else(|| Error::NotFound { what: kind.what(), id: name.to_string() })?;
        connection_row(&row)
    }

    /// The stored secret, opened: for connecting, never for showing.
    pub async fn connection_secret(&self, kind: ConnectionKind, name: &str) -> Result<Option<String>> {
        let row = self
            .db
            .query_opt(&format!("SELECT secret FROM {} WHERE name = $1", kind.table()), params![name])
            .await?
            .ok_or_else(|| Error::NotFound { what: kind.what(), id: name.to_string() })?;
        row.opt_bytes(0)?.map(|sealed| self.key.open(&kind.secret_context(name), &sealed)).transpose()
    }

    /// Refused while a job uses it.
    pub async fn delete_connection(&self, kind: ConnectionKind, name: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let users = tx
            .query(&format!("SELECT name FROM jobs WHERE {} = $1 ORDER BY name", kind.job_column()), params![name])
            .await?;
        if !users.is_empty() {
            let jobs: Vec<String> = users.iter().map(|r| r.text(0)).collect::<Result<_>>()?;
            return Err(Error::Conflict(format!("{} {name:?} is used by jobs: {}", kind.what(), jobs.join(", "))));
        }
        if tx.execute(&format!("DELETE FROM {} WHERE name = $1", kind.table()), params![name]).await? == 0 {
            return Err(Error::NotFound { what: kind.what(), id: name.to_string() });
        }
        tx.commit().await
    }
}
