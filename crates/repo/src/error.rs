//! Typed errors of the repository.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wrong passphrase or key file: no key slot of this repository opens with it")]
    WrongKey,
    #[error("the repository is encrypted: give a passphrase or a key file")]
    KeyNeeded,
    #[error(
        "no intact key slot opens with this passphrase or key file, and key slots are damaged (if the secret is right, its slot is among them): {0}"
    )]
    KeySlotsDamaged(String),
    #[error("no repository at {0} (run `xenvault init` first)")]
    NotARepository(String),
    #[error("a repository already exists at {0}")]
    AlreadyExists(String),
    #[error("unsupported repository format version {0}")]
    UnsupportedVersion(u32),
    #[error("object {object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("chunk {0} is not in the repository")]
    MissingChunk(String),
    #[error("restore point {0} not found")]
    RestorePointNotFound(String),
    #[error("restore point {id} is damaged: its manifest cannot be read ({reason})")]
    RestorePointDamaged { id: String, reason: String },
    #[error("restore point prefix {0} is ambiguous")]
    AmbiguousSnapshot(String),
    #[error("disk not found: {0}")]
    DiskNotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("repository is locked: {0}")]
    Locked(String),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("I/O: {0}")]
    IoPlain(#[from] std::io::Error),
    #[error("local cache: {0}")]
    Cache(#[from] rusqlite::Error),
    #[error("JSON in {object}: {source}")]
    Json { object: String, source: serde_json::Error },
    #[error("background task failed: {0}")]
    Task(String),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt { object: object.into(), reason: reason.into() }
    }

    /// True for errors that mean "stored data is damaged" rather than "cannot run".
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::MissingChunk(_)
                | Error::RestorePointDamaged { .. }
                | Error::KeySlotsDamaged(_)
        )
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
