//! The pools and repositories registered in the catalog, opened by whoever runs a job's
//! work: the server, or a scale-out node. Passwords and passphrases come out of the
//! catalog's sealed secrets (a node needs the catalog's key file in its data directory).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use utoipa::ToSchema;
use xenvault_catalog::{Catalog, ConnectionKind};
use xenvault_pool::config::{PoolEntry, PoolLogin};
use xenvault_repo::repository::Repository;

/// Where a repository is; its passphrase is the connection's secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositorySettings {
    /// A directory, s3://bucket/prefix or azblob://container/prefix.
    pub location: String,
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default)]
    pub s3_region: Option<String>,
}

impl RepositorySettings {
    /// How to reach it, its immutable objects cached under `cache_dir`.
    pub fn backend(&self, cache_dir: &Path) -> xenvault_repo::backend::BackendOptions {
        xenvault_repo::backend::BackendOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            cache_dir: Some(cache_dir.to_owned()),
            ..Default::default()
        }
    }
}

/// The registered pool `name` with its password, to log in with.
pub async fn pool_login(catalog: &Catalog, name: &str) -> Result<PoolLogin, xenvault_catalog::Error> {
    let pool = catalog.connection::<PoolEntry>(ConnectionKind::Pool, name).await?;
    let password = catalog.connection_secret(ConnectionKind::Pool, name).await?.unwrap_or_default();
    Ok(PoolLogin { name: pool.name, entry: pool.settings, password })
}

/// Repositories opened once per process (opening derives the key from the passphrase,
/// which is slow on purpose), each refreshed before use so it sees what other writers
/// committed meanwhile.
pub struct Repositories {
    cache_dir: PathBuf,
    open: Mutex<HashMap<String, Repository>>,
}

impl Repositories {
    pub fn new(cache_dir: PathBuf) -> Self {
        Repositories { cache_dir, open: Mutex::new(HashMap::new()) }
    }

    /// The registered repository `name`, opened with its passphrase, index refreshed.
    pub async fn get(&self, catalog: &Catalog, name: &str) -> Result<Repository, String> {
        let mut open = self.open.lock().await;
        let repo = match open.get(name) {
            Some(repo) => repo.clone(),
            None => {
                let kind = ConnectionKind::Repository;
                let stored = catalog
                    .connection::<RepositorySettings>(kind, name)
                    .await
                    .map_err(|e| format!("repository {name}: {e}"))?;
                let passphrase = catalog
                    .connection_secret(kind, name)
                    .await
                    .map_err(|e| format!("repository {name}: {e}"))?
                    .unwrap_or_default();
                let secret = xenvault_repo::keys::Secret::passphrase(&passphrase);
                let backend = stored.settings.backend(&self.cache_dir);
                let repo = Repository::open(&stored.settings.location, &backend, Some(&secret))
                    .await
                    .map_err(|e| format!("opening repository {name} ({}): {e}", stored.settings.location))?;
                open.insert(name.to_owned(), repo.clone());
                repo
            }
        };
        drop(open);
        repo.refresh_index().await.map_err(|e| format!("reading repository {name}: {e}"))?;
        Ok(repo)
    }
}
