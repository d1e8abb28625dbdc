//! The server's settings: a TOML file (`/etc/xenvault/server.toml` unless told otherwise),
//! then what the command line overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StartError;

pub const DEFAULT_CONFIG: &str = "/etc/xenvault/server.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/xenvault";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The catalog (unless `catalog` names PostgreSQL), its key, the TLS identity.
    pub data_dir: PathBuf,
    /// PEM certificate chain and key; without them a self-signed pair is made in the data dir.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `postgres://...`; the embedded SQLite file in the data dir when unset.
    pub catalog: Option<String>,
    /// The first admin's password (else `XENVAULT_ADMIN_PASSWORD`, else one is generated
    /// and printed once).
    pub admin_password: Option<String>,
    /// How long running jobs get to finish after SIGTERM before they are cancelled.
    pub shutdown_timeout_secs: u64,
    /// Where run reports go by email (jobs' `notifications.email`); without it those
    /// notifications fail, saying so in the run's log.
    pub smtp: Option<xenvault_notify::SmtpSettings>,
    /// Where instant access serves disks over NBD (each on a port of its own).
    pub instant_access_address: std::net::IpAddr,
    /// Where repositories' immutable objects are cached (default `<data_dir>/cache`).
    pub cache_dir: Option<PathBuf>,
    /// The only directory file restores write into (default `<data_dir>/restores`): a
    /// restore's destination is a path inside it.
    pub restore_root: Option<PathBuf>,
    /// Backup runs are handed out VM by VM to scale-out nodes (`xenvault node`) through
    /// the catalog's queue instead of running here; needs a PostgreSQL `catalog`.
    pub scale_out: bool,
    /// This server's name among the nodes (default `server@HOSTNAME`): its runs are its
    /// own, and another server's restart leaves them alone while it heartbeats.
    pub node_name: Option<String>,
    /// The passphrase config-backup jobs seal the server's configuration with (a file
    /// holding it; else `XENVAULT_CONFIG_PASSPHRASE`): not any repository's.
    pub config_backup_passphrase_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            tls_cert: None,
            tls_key: None,
            catalog: None,
            admin_password: None,
            shutdown_timeout_secs: 30,
            smtp: None,
            instant_access_address: std::net::Ipv4Addr::LOCALHOST.into(),
            cache_dir: None,
            restore_root: None,
            scale_out: false,
            node_name: None,
            config_backup_passphrase_file: None,
        }
    }
}

impl ServerConfig {
    /// Reads `path`. A missing file is an error when the user named it (`explicit`), and
    /// the defaults when it is the default path.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, StartError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(Self::default()),
            Err(e) => return Err(StartError::Config(format!("reading {}: {e}", path.display()))),
        };
        toml::from_str(&text).map_err(|e| StartError::Config(format!("{}: {e}", path.display())))
    }

    /// The directories the server writes besides the catalog, defaults resolved.
    pub fn work_dirs(&self) -> WorkDirs {
        WorkDirs {
            cache: self.cache_dir.clone().unwrap_or_else(|| self.data_dir.join("cache")),
            restores: self.restore_root.clone().unwrap_or_else(|| self.data_dir.join("restores")),
        }
    }

    /// Where the TLS identity comes from: the configured pair, or the self-signed one kept
    /// in the data dir.
    pub fn tls_paths(&self) -> Result<(PathBuf, PathBuf, bool), StartError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok((cert.clone(), key.clone(), false)),
            (None, None) => Ok((self.data_dir.join("server-cert.pem"), self.data_dir.join("server-key.pem"), true)),
            _ => Err(StartError::Config("give both tls_cert and tls_key, or neither (a self-signed pair)".into())),
        }
    }
}

/// See [`ServerConfig::cache_dir`] and [`ServerConfig::restore_root`].
#[derive(Debug, Clone)]
pub struct WorkDirs {
    pub cache: PathBuf,
    pub restores: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_default_file_gives_defaults_and_a_missing_named_file_an_error() {
        let dir = std::env::temp_dir().join(format!("xenvault-server-config-{}", std::process::id()));
        let missing = dir.join("nope.toml");
        assert_eq!(ServerConfig::load(&missing, false).expect("defaults").listen.to_string(), DEFAULT_LISTEN);
        let err = ServerConfig::load(&missing, true).expect_err("named file missing");
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/server.md");
        let example = doc.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a TOML example");
        let config: ServerConfig = toml::from_str(example).expect("docs/server.md's example");
        assert_eq!(config.work_dirs().restores, Path::new("/var/lib/xenvault/restores"));
        assert_eq!(config.smtp.expect("smtp").port, 587);
    }

    #[test]
    fn unknown_keys_and_half_tls_pairs_are_refused() {
        let err = toml::from_str::<ServerConfig>("lisen = \"127.0.0.1:1\"").expect_err("typo");
        assert!(err.to_string().contains("lisen"), "{err}");
        let config: ServerConfig = toml::from_str("tls_cert = \"/c.pem\"").expect("parses");
        assert!(config.tls_paths().is_err());
    }
}
