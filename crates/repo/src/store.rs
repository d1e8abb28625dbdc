//! The repository's view of storage: named immutable objects. Everything above this
//! module speaks object names (`config`, `keys/…`, `data/xx/…`, `index/…`, `snapshots/…`).

use crate::error::{Error, Result};
use bytes::Bytes;

pub struct Store {
    op: opendal::Operator,
    location: String,
}

fn backend_error(op: &str, name: &str, e: opendal::Error) -> Error {
    Error::Backend(format!("{op} {name}: {e}"))
}

impl Store {
    pub async fn open(location: &str) -> Result<Self> {
        let root = std::path::absolute(location).map_err(|e| Error::Io { path: location.into(), source: e })?;
        let root = root.to_string_lossy().into_owned();
        let builder = opendal::services::Fs::default().root(&root).atomic_write_dir(&format!("{root}/.tmp"));
        let op = opendal::Operator::new(builder).map_err(|e| backend_error("open", &root, e))?;
        Ok(Store { op, location: location.to_string() })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Publishes a whole object atomically (readers see all of it or nothing).
    pub async fn put(&self, name: &str, data: impl Into<Bytes>) -> Result<()> {
        let data: Bytes = data.into();
        self.op.write(name, data).await.map(|_| ()).map_err(|e| backend_error("put", name, e))
    }

    /// The whole object, or `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.op.read(name).await {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend_error("get", name, e)),
        }
    }

    pub async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        match self.op.read_with(name).range(offset..offset + len).await {
            Ok(b) if b.len() as u64 == len => Ok(b.to_vec()),
            Ok(_) => Err(Error::corrupt(name, "object shorter than its index says")),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Err(Error::corrupt(name, "object missing")),
            Err(e) => Err(backend_error("get", name, e)),
        }
    }

    /// Object names (relative to the repository root) and sizes under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let entries = match self.op.list_with(prefix).recursive(true).await {
            Ok(v) => v,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(backend_error("list", prefix, e)),
        };
        Ok(entries
            .into_iter()
            .filter(|e| !e.path().ends_with('/'))
            .map(|e| (e.path().to_string(), e.metadata().content_length()))
            .collect())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        self.op.delete(name).await.map_err(|e| backend_error("delete", name, e))
    }
}
