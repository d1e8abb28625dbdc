//! Typed errors of restore operations.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] xenvault_repo::Error),
    #[error("{0}")]
    Fs(#[from] xenvault_fsread::Error),
    #[error("disk {disk} has no volume {name:?}; it has: {available}")]
    NoSuchVolume { disk: String, name: String, available: String },
    #[error("disk {disk} has several volumes with file systems ({available})")]
    AmbiguousVolume { disk: String, available: String },
    #[error("disk {0} holds no file system we can read")]
    NoFileSystem(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("VHD: {0}")]
    Vhd(#[from] xenvault_vhd::Error),
    #[error("XVA: {0}")]
    Xva(#[from] xenvault_xva::Error),
    #[error("XenAPI: {0}")]
    Xapi(#[from] xenvault_xapi::Error),
    #[error(transparent)]
    Pool(#[from] xenvault_pool::Error),
    #[error("restore point metadata: {0}")]
    Metadata(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
    /// The restore target does not exist, does not fit, or is in use.
    #[error("restore target: {0}")]
    Target(String),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// A restore failed after creating objects in the pool; `cleanup` says what was removed.
    #[error("{source}; {cleanup}")]
    CleanedUp { source: Box<Error>, cleanup: String },
}

impl Error {
    /// Whether the operation stopped because the caller cancelled it (also when it then
    /// cleaned up after itself).
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::CleanedUp { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
