//! The engine's typed errors.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("no VM matches {0:?}")]
    NoSuchVm(String),
    #[error("{0:?} matches {1} VMs: give its uuid")]
    AmbiguousVm(String, usize),
    #[error("no host matches {0:?}")]
    NoSuchHost(String),
    #[error("XVA: {0}")]
    Xva(String),
    /// A transfer that ended before its end (connection cut, short body).
    #[error("transfer interrupted: {0}")]
    Cut(String),
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
    #[error("{0}")]
    Hook(String),
}

