//! Local cache of immutable repository objects (manifests, pack indexes), kept as the
//! sealed bytes the repository stores, so the cache leaks nothing the store does not.
//! Listing restore points then costs one LIST plus reads of new manifests only.

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Cache {
    db: Mutex<Connection>,
}

/// `$XENVAULT_CACHE_DIR`, else `$XDG_CACHE_HOME/xenvault`, else `~/.cache/xenvault`.
pub fn default_dir() -> Option<PathBuf> {
    if cfg!(test) {
        // Unit tests must not touch the user's cache.
        return Some(std::env::temp_dir().join("xenvault-unit-test-cache"));
    }
    if let Some(d) = std::env::var_os("XENVAULT_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("xenvault"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("xenvault"))
}

impl Cache {
    /// Opens (creating) the cache of repository `repo_id` under `dir`.
    pub fn open(dir: &Path, repo_id: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Connection::open(dir.join(format!("{repo_id}.sqlite")))?;
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
        self.with(|db| {
            db.query_row("SELECT data FROM objects WHERE name = ?1", params![name], |r| r.get(0)).optional()
        })
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
}
