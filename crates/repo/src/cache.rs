//! Local cache of immutable repository objects (manifests, pack indexes), kept as the
//! sealed bytes the repository stores, so the cache leaks nothing the store does not.
//! Listing restore points then costs one LIST plus reads of new manifests only. The
//! caller names the directory (`BackendOptions::cache_dir`).

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;

pub struct Cache {
    db: Mutex<Connection>,
}

impl Cache {
    /// Opens (creating) the cache of repository `repo_id` under `dir`. It holds only sealed
    /// objects, yet stays private like the repository: directory 0700, database 0600
    /// (SQLite gives its -wal and -shm files the database's mode).
    pub fn open(dir: &Path, repo_id: &str) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        crate::local::create_private_dirs(dir)?;
        let path = dir.join(format!("{repo_id}.sqlite"));
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        // A database made by an older version was 0644.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        drop(file);
        let db = Connection::open(&path)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch("CREATE TABLE IF NOT EXISTS objects (name TEXT PRIMARY KEY, data BLOB NOT NULL)")?;
        Ok(Cache { db: Mutex::new(db) })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&db)?)
    }

    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.with(|db| db.query_row("SELECT data FROM objects WHERE name = ?1", params![name], |r| r.get(0)).optional())
    }

    pub fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.with(|db| db.execute("INSERT OR REPLACE INTO objects (name, data) VALUES (?1, ?2)", params![name, data]))
            .map(|_| ())
    }

    /// Drops cached objects under `prefix` that are no longer in `present`.
    pub fn retain(&self, prefix: &str, present: &std::collections::HashSet<String>) -> Result<()> {
        self.with(|db| {
            let mut stmt = db.prepare("SELECT name FROM objects WHERE substr(name, 1, ?2) = ?1")?;
            let names: Vec<String> =
                stmt.query_map(params![prefix, prefix.len() as i64], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            for n in names.iter().filter(|n| !present.contains(*n)) {
                db.execute("DELETE FROM objects WHERE name = ?1", params![n])?;
            }
            Ok(())
        })
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.with(|db| db.execute("DELETE FROM objects WHERE name = ?1", params![name])).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_retain() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), "r1").unwrap();
        c.put("snapshots/a", b"1").unwrap();
        c.put("snapshots/b", b"2").unwrap();
        c.put("index/c", b"3").unwrap();
        assert_eq!(c.get("snapshots/a").unwrap().unwrap(), b"1");
        let keep = ["snapshots/b".to_string()].into_iter().collect();
        c.retain("snapshots/", &keep).unwrap();
        assert!(c.get("snapshots/a").unwrap().is_none());
        assert!(c.get("snapshots/b").unwrap().is_some());
        assert!(c.get("index/c").unwrap().is_some());
    }

    #[test]
    fn private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        Cache::open(&cache_dir, "r1").unwrap().put("snapshots/a", b"1").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache_dir), 0o700);
        assert_eq!(mode(&cache_dir.join("r1.sqlite")), 0o600);
    }
}
