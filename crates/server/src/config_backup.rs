//! xenvault's own configuration backup: what a server needs to come back on a new machine
//! (the "lost my backup appliance" case) — its settings file, its whole catalog (pools,
//! repositories and their sealed secrets, jobs, schedules, users, tokens, run history,
//! restore point records) with the key that opens those secrets, and its self-signed TLS
//! pair (clients keep their pinned fingerprint). Serialized as a versioned JSON document,
//! sealed under the configuration backup passphrase and stored in a repository by
//! `xenvault_jobs::config_backup`; restored into a fresh data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use xenvault_catalog::{Catalog, CatalogDump};
use xenvault_jobs::config_backup::{self, ConfigBackupError, Sealed, StoredConfigBackup};
use xenvault_repo::{KdfParams, Repository};

use crate::config::ServerConfig;

/// Where the `xenvault server backup-config` command and scheduled config-backup jobs read
/// the passphrase when no file is given.
pub const PASSPHRASE_ENV: &str = "XENVAULT_CONFIG_PASSPHRASE";
/// The settings file a restore writes into the data directory.
pub const RESTORED_CONFIG_FILE: &str = "server.toml";
/// The version of [`ConfigSnapshot`] this build writes and reads.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigRestoreError {
    #[error(transparent)]
    Backup(#[from] ConfigBackupError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(String),
    #[error("the configuration: {0}")]
    Catalog(#[from] xenvault_catalog::Error),
}

/// Everything a configuration backup holds, before it is sealed.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    pub format: u32,
    /// The host name of the server.
    pub server: String,
    pub created_at: DateTime<Utc>,
    /// The server's settings, TOML.
    pub settings: String,
    /// Files of the data directory besides the catalog (the self-signed TLS pair), hex.
    pub files: BTreeMap<String, String>,
    pub catalog: CatalogDump,
}

impl ConfigSnapshot {
    /// Takes the snapshot of a server's configuration.
    pub async fn take(config: &ServerConfig, catalog: &Catalog) -> Result<Self, ConfigRestoreError> {
        let settings = toml::to_string(config).map_err(|e| ConfigRestoreError::Io(format!("the settings: {e}")))?;
        let mut files = BTreeMap::new();
        if let Ok((cert, key, true)) = config.tls_paths() {
            for path in [cert, key] {
                match std::fs::read(&path) {
                    Ok(bytes) => drop(files.insert(file_name(&path)?, hex::encode(bytes))),
                    // Not made yet: the restored server makes its own.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ConfigRestoreError::Io(format!("reading {}: {e}", path.display()))),
                }
            }
        }
        Ok(ConfigSnapshot {
            format: FORMAT,
            server: host_name(),
            created_at: Utc::now(),
            settings,
            files,
            catalog: catalog.dump().await?,
        })
    }

    /// How many of each thing it holds: shown without the passphrase.
    pub fn contents(&self) -> BTreeMap<String, u64> {
        let tables = [
            ("pools", "pools"),
            ("repositories", "repositories"),
            ("jobs", "jobs"),
            ("runs", "runs"),
            ("restore points", "restore_points"),
            ("users", "users"),
            ("api tokens", "api_tokens"),
        ];
        tables.iter().map(|(what, table)| ((*what).to_owned(), self.catalog.rows(table) as u64)).collect()
    }

    /// Serialized and sealed under `passphrase`.
    pub fn seal(&self, passphrase: &str, kdf: KdfParams) -> Result<Sealed, ConfigRestoreError> {
        let content = serde_json::to_vec(self).map_err(|e| ConfigRestoreError::Io(e.to_string()))?;
        let blob = config_backup::seal(passphrase, kdf, &content)?;
        Ok(Sealed { server: self.server.clone(), blob, contents: self.contents() })
    }

    /// The snapshot a blob seals, when `passphrase` opens it.
    pub fn open(passphrase: &str, blob: &[u8]) -> Result<Self, ConfigRestoreError> {
        let content = config_backup::open(passphrase, blob)?;
        let snapshot: ConfigSnapshot = serde_json::from_slice(&content)
            .map_err(|e| ConfigBackupError::Damaged(format!("its content does not read: {e}")))?;
        if snapshot.format != FORMAT {
            return Err(ConfigRestoreError::Refused(format!(
                "configuration snapshot format {} is not one this xenvault reads ({FORMAT}): upgrade xenvault",
                snapshot.format
            )));
        }
        Ok(snapshot)
    }
}

fn file_name(path: &Path) -> Result<String, ConfigRestoreError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| ConfigRestoreError::Io(format!("{} has no file name", path.display())))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "xenvault".to_owned())
}

/// The catalog of an existing server (not a new one made on the way: a wrong data
/// directory would otherwise be backed up as an empty configuration).
pub async fn open_catalog(config: &ServerConfig) -> Result<Catalog, ConfigRestoreError> {
    let key = config.data_dir.join(xenvault_catalog::KEY_FILE);
    if !key.exists() {
        return Err(ConfigRestoreError::Refused(format!(
            "{} holds no server catalog (no {}): give the server's --config or --data-dir",
            config.data_dir.display(),
            xenvault_catalog::KEY_FILE
        )));
    }
    Ok(Catalog::open(&config.data_dir, config.catalog.as_deref()).await?)
}

/// The configuration backup passphrase of a server: the file its settings name, else
/// [`PASSPHRASE_ENV`].
pub fn server_passphrase(config: &ServerConfig) -> Result<String, String> {
    let passphrase = match &config.config_backup_passphrase_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("reading config_backup_passphrase_file {}: {e}", path.display()))?,
        None => std::env::var(PASSPHRASE_ENV).unwrap_or_default(),
    };
    if passphrase.is_empty() {
        return Err(format!(
            "no configuration backup passphrase: set config_backup_passphrase_file in the server's settings \
             (or {PASSPHRASE_ENV} in its environment)"
        ));
    }
    Ok(passphrase)
}

/// A snapshot of the server, sealed with its own passphrase: what a config-backup run stores.
pub async fn sealed_for_run(config: &ServerConfig, catalog: &Catalog) -> Result<Sealed, String> {
    let passphrase = server_passphrase(config)?;
    let snapshot = ConfigSnapshot::take(config, catalog).await.map_err(|e| e.to_string())?;
    snapshot.seal(&passphrase, KdfParams::default()).map_err(|e| e.to_string())
}

/// Backs the configuration up into `repo` (a restore point tagged with `tags`).
pub async fn back_up(
    config: &ServerConfig,
    catalog: &Catalog,
    repo: &Repository,
    passphrase: &str,
    tags: Vec<String>,
    cancel: &CancellationToken,
) -> Result<StoredConfigBackup, ConfigRestoreError> {
    let sealed = ConfigSnapshot::take(config, catalog).await?.seal(passphrase, KdfParams::default())?;
    Ok(config_backup::store(repo, &sealed.server, &sealed.blob, sealed.contents, tags, cancel).await?)
}

/// Where and how a configuration is restored.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    pub data_dir: PathBuf,
    /// The catalog database, when not the one the backed-up settings name.
    pub catalog: Option<String>,
    /// Restore into a data directory or catalog that holds something (it is replaced).
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigRestoreReport {
    pub server: String,
    pub backed_up_at: DateTime<Utc>,
    pub data_dir: PathBuf,
    /// The restored settings (their data dir is the new one): start the server with it.
    pub settings_file: PathBuf,
    pub contents: BTreeMap<String, u64>,
    /// Paths the restored settings name outside the data directory (certificates, the
    /// passphrase file): they must exist on this machine too.
    pub external_paths: Vec<PathBuf>,
}

/// Restores `snapshot`: the catalog with its key, the TLS pair, and the settings written
/// into the data directory with `data_dir` (and `catalog` when given) pointing at the new
/// place. A data directory that holds anything is refused unless forced; the settings are
/// written last, once the catalog is in. (The run that made the backup was running when
/// the catalog was copied: the restored server marks it interrupted, as after a crash.)
pub async fn restore(
    snapshot: ConfigSnapshot,
    target: &RestoreTarget,
) -> Result<ConfigRestoreReport, ConfigRestoreError> {
    let mut settings: ServerConfig = toml::from_str(&snapshot.settings)
        .map_err(|e| ConfigBackupError::Damaged(format!("its server settings do not read: {e}")))?;
    check_target(&target.data_dir, target.force)?;
    settings.data_dir = target.data_dir.clone();
    if target.catalog.is_some() {
        settings.catalog = target.catalog.clone();
    }
    let contents = snapshot.contents();
    Catalog::restore_dump(&target.data_dir, settings.catalog.as_deref(), snapshot.catalog, target.force).await?;
    for (name, hex_bytes) in &snapshot.files {
        let bytes =
            hex::decode(hex_bytes).map_err(|_| ConfigBackupError::Damaged(format!("file {name} is not hex")))?;
        write_private(&target.data_dir.join(name), &bytes)?;
    }
    let settings_file = target.data_dir.join(RESTORED_CONFIG_FILE);
    let text = toml::to_string(&settings).map_err(|e| ConfigRestoreError::Io(format!("the settings: {e}")))?;
    write_private(&settings_file, text.as_bytes())?;
    let external_paths = [&settings.tls_cert, &settings.tls_key, &settings.config_backup_passphrase_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    Ok(ConfigRestoreReport {
        server: snapshot.server,
        backed_up_at: snapshot.created_at,
        data_dir: target.data_dir.clone(),
        settings_file,
        contents,
        external_paths,
    })
}

/// A data directory to restore into is missing, empty, or `force` is given.
fn check_target(data_dir: &Path, force: bool) -> Result<(), ConfigRestoreError> {
    let mut entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ConfigRestoreError::Io(format!("data directory {}: {e}", data_dir.display()))),
    };
    match entries.next() {
        Some(_) if !force => Err(ConfigRestoreError::Refused(format!(
            "data directory {} is not empty: restore into a new one, or force replacing what it holds",
            data_dir.display()
        ))),
        _ => Ok(()),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigRestoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .map_err(|e| ConfigRestoreError::Io(format!("writing {}: {e}", path.display())))
}
