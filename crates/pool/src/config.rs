//! Pool connections kept between runs: `config.toml` holds what is safe to show,
//! `secrets.toml` beside it (mode 0600) holds the passwords.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
pub use xenvault_tls::ServerTrust;

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEntry {
    pub url: String,
    pub user: String,
    /// How the pool master's certificate is checked (system roots, a pinned fingerprint, ...).
    pub tls: ServerTrust,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub pools: BTreeMap<String, PoolEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Secrets {
    #[serde(default)]
    passwords: BTreeMap<String, String>,
}

/// A pool ready to connect to: its entry and its password.
#[derive(Debug, Clone)]
pub struct PoolLogin {
    pub name: String,
    pub entry: PoolEntry,
    pub password: String,
}

/// The configuration file and its secrets file.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    path: PathBuf,
}

impl ConfigStore {
    /// The configuration file at `path` (the caller picks it: a flag, the XDG directory, a
    /// service's state directory); its secrets file sits beside it.
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn secrets_path(&self) -> PathBuf {
        self.path.with_file_name("secrets.toml")
    }

    pub fn load(&self) -> Result<Config, Error> {
        read_toml(&self.path)
    }

    pub fn add_pool(&self, name: &str, entry: PoolEntry, password: &str) -> Result<(), Error> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Error::Config(format!("invalid pool name {name:?}")));
        }
        let mut config = self.load()?;
        let mut secrets: Secrets = read_toml(&self.secrets_path())?;
        config.pools.insert(name.to_owned(), entry);
        secrets.passwords.insert(name.to_owned(), password.to_owned());
        // Secrets first: a config entry without its password would be unusable.
        write_file(&self.secrets_path(), &to_toml(&secrets)?, true)?;
        write_file(&self.path, &to_toml(&config)?, false)
    }

    /// Forgets a pool and its password; false when there was no such pool.
    pub fn remove_pool(&self, name: &str) -> Result<bool, Error> {
        let mut config = self.load()?;
        let mut secrets: Secrets = read_toml(&self.secrets_path())?;
        let known = config.pools.remove(name).is_some();
        if secrets.passwords.remove(name).is_some() {
            write_file(&self.secrets_path(), &to_toml(&secrets)?, true)?;
        }
        if known {
            write_file(&self.path, &to_toml(&config)?, false)?;
        }
        Ok(known)
    }

    /// The pool and its password: `password` when the caller has one, else the stored one.
    pub fn login(&self, name: &str, password: Option<String>) -> Result<PoolLogin, Error> {
        let config = self.load()?;
        let entry = config
            .pools
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Config(format!("no pool named {name:?} in {}", self.path.display())))?;
        let password = match password {
            Some(password) => password,
            None => {
                let secrets: Secrets = read_toml(&self.secrets_path())?;
                secrets
                    .passwords
                    .get(name)
                    .cloned()
                    .ok_or_else(|| Error::Config(format!("no password stored for pool {name:?}")))?
            }
        };
        Ok(PoolLogin { name: name.to_owned(), entry, password })
    }
}

/// Reads a password file: the first line, without its line ending.
pub fn read_password_file(path: &Path) -> Result<String, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(Error::Config(format!("{} holds no password", path.display())));
    }
    Ok(password)
}

/// SHA-256 fingerprint (lowercase hex) of the first certificate in a PEM text, the form
/// pins are written in: pins a self-signed host such as the simulator.
pub fn fingerprint_of_pem(pem: &str) -> Option<String> {
    xenvault_tls::pem_fingerprint_sha256(pem.as_bytes()).ok()
}

fn read_toml<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::Config(format!("cannot read {}: {e}", path.display()))),
    }
}

fn to_toml<T: Serialize>(value: &T) -> Result<String, Error> {
    toml::to_string_pretty(value).map_err(|e| Error::Config(e.to_string()))
}

/// Writes through a temporary file and a rename so a crash never leaves half a file.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), Error> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io)?;
    #[cfg(unix)]
    if secret {
        // `mode` applies only to new files: tighten one that existed already.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_round_trip_keeps_password_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path().join("c/config.toml"));
        let entry =
            PoolEntry { url: "https://10.0.0.1".into(), user: "root".into(), tls: ServerTrust::PinSha256([0xab; 32]) };
        store.add_pool("lab", entry.clone(), "s3cret").unwrap();
        let config_text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!config_text.contains("s3cret"));
        let login = store.login("lab", None).unwrap();
        assert_eq!(login.entry, entry);
        assert_eq!(login.password, "s3cret");
        assert_eq!(store.login("lab", Some("given".into())).unwrap().password, "given");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.secrets_path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(store.login("other", None).is_err());
    }
}
