//! The repository's view of storage: named immutable objects on an [`ObjectStore`].
//! Everything above this module speaks object names (`config`, `keys/…`, `data/xx/…`,
//! `index/…`, …).

use std::sync::Arc;

use crate::backend::ObjectStore;
use crate::error::{Error, Result};
use bytes::Bytes;

pub struct Store {
    backend: Arc<dyn ObjectStore>,
}

impl Store {
    pub fn on(backend: Arc<dyn ObjectStore>) -> Self {
        Store { backend }
    }

    /// The one backend of this store: retention and lock use it too.
    pub fn backend(&self) -> &Arc<dyn ObjectStore> {
        &self.backend
    }

    pub fn location(&self) -> &str {
        self.backend.location()
    }

    /// Publishes a whole object atomically (readers see all of it or nothing).
    pub async fn put(&self, name: &str, data: impl Into<Bytes>) -> Result<()> {
        Ok(self.backend.put(name, data.into()).await?)
    }

    /// The whole object, or `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.backend.get(name).await {
            Ok(b) => Ok(Some(b.into())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `len` bytes at `offset`; a missing or short object is damage.
    pub async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        match self.backend.get_range(name, offset..offset + len).await {
            Ok(b) if b.len() as u64 == len => Ok(b.into()),
            Ok(_) => Err(Error::corrupt(name, "object shorter than its index says")),
            Err(e) if e.is_not_found() => Err(Error::corrupt(name, "object missing")),
            Err(e) => Err(e.into()),
        }
    }

    /// Object names (relative to the repository root) and sizes under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.backend.list(prefix).await?.into_iter().map(|o| (o.path, o.size)).collect())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        Ok(self.backend.delete(name).await?)
    }

    /// Removes temporary files interrupted writes left, older than `age`; returns how many.
    pub async fn remove_temp_files(&self, age: std::time::Duration) -> Result<usize> {
        Ok(self.backend.remove_temp_files(age).await?)
    }
}
