//! The service catalog: job definitions and schedule state, runs with their task trees and
//! logs, the restore-point index, pools and repositories (secrets sealed), users, API
//! tokens, web sessions, the audit log and server settings.
//!
//! Embedded SQLite (one WAL file in the data directory) by default, PostgreSQL when given a
//! `postgres://` URL: one schema, one set of migrations, one SQL dialect (see `db`). The key
//! that seals secrets stays in the data directory in both cases.

mod audit;
mod connections;
mod db;
mod dump;
mod error;
mod jobs;
mod migrations;
mod queue;
mod restore_points;
mod restores;
mod runs;
mod secrets;
mod settings;
mod users;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit::{AuditEntry, AuditQuery};
pub use connections::{Connection, ConnectionKind};
pub use db::Engine;
pub use dump::{CatalogDump, DumpValue, TableDump};
pub use error::{Error, Result};
pub use migrations::SCHEMA_VERSION;
pub use queue::{
    Affinity, LimitScope, MAX_ATTEMPTS, NodeInfo, NodeStatus, PlannedVm, QueueCounts, QueuedTask, TaskEnd,
};
pub use restore_points::{RestorePointEntry, RestorePointQuery};
pub use restores::{Restore, RestoreKind, RestorePage, RestoreQuery, RestoreStatus, WorkProgress};
pub use runs::{LogLevel, LogLine, RunDetail, RunPage, RunQuery, VmLastSuccess};
pub use secrets::KEY_FILE;
pub use users::{ApiToken, NewApiToken, NewSession, Role, Session, User};

use db::Db;
use secrets::SecretKey;

/// The SQLite file's name in the data directory.
pub const SQLITE_FILE: &str = "catalog.sqlite";

pub struct Catalog {
    db: Db,
    key: SecretKey,
    /// The registered node (a server or a scale-out node) this catalog's runs belong to.
    owner: std::sync::OnceLock<String>,
}

impl Catalog {
    /// Opens the catalog and brings its schema up to date. `database` is a
    /// `postgres://`/`postgresql://` URL, a SQLite file path, or none for
    /// `DATA_DIR/catalog.sqlite`. The data directory (created 0700 if missing) holds the
    /// key that seals secrets, for either engine.
    pub async fn open(data_dir: &Path, database: Option<&str>) -> Result<Catalog> {
        create_private_dir(data_dir)?;
        let key = SecretKey::load_or_create(data_dir)?;
        let db = match database {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Db::open_postgres(url).await?
            }
            Some(path) => Db::open_sqlite(&PathBuf::from(path.strip_prefix("sqlite:").unwrap_or(path))).await?,
            None => Db::open_sqlite(&data_dir.join(SQLITE_FILE)).await?,
        };
        migrations::migrate(&db).await?;
        Ok(Catalog { db, key, owner: std::sync::OnceLock::new() })
    }

    /// Registers `node` and makes it the owner of the runs this catalog creates from now
    /// on (once per catalog; the caller keeps the node's heartbeat going).
    pub async fn act_as(&self, node: &NodeInfo) -> Result<()> {
        self.register_node(node).await?;
        self.owner
            .set(node.name.clone())
            .map_err(|_| Error::Conflict(format!("this catalog already acts as node {}", self.owner().unwrap_or("?"))))
    }

    /// The node this catalog acts as ([`Catalog::act_as`]): a server that hands its runs
    /// out to scale-out nodes.
    pub fn owner(&self) -> Option<&str> {
        self.owner.get().map(String::as_str)
    }

    pub async fn engine(&self) -> Engine {
        self.db.engine().await
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Connect(format!("data directory {}: {e}", dir.display()))),
    }
}

/// The text serde gives a unit enum variant (e.g. `RunStatus::Running` → "running"): how
/// enums are stored, so the catalog and the API spell them alike.
fn enum_text<T: Serialize + std::fmt::Debug>(value: &T) -> Result<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => Ok(text),
        _ => Err(Error::Invalid(format!("{value:?} has no text form"))),
    }
}

fn text_enum<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|e| Error::Corrupt(format!("stored value {text:?}: {e}")))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Invalid(e.to_string()))
}

/// Now, at the catalog's precision (milliseconds), so what is stored reads back equal.
fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let ms = chrono::Utc::now().timestamp_millis();
    chrono::Utc.timestamp_millis_opt(ms).single().unwrap_or_else(chrono::Utc::now)
}
