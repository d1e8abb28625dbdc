//! Replication's errors: those of the libraries it drives, and its own refusals.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] xenvault_engine::Error),
    #[error(transparent)]
    Restore(#[from] xenvault_restore::Error),
    #[error("XenAPI: {0}")]
    Xapi(#[from] xenvault_xapi::Error),
    #[error("NBD: {0}")]
    Nbd(#[from] xenvault_nbd::Error),
    #[error("repository: {0}")]
    Repo(#[from] xenvault_repo::Error),
    /// What was asked cannot be done (a wrong option, an unknown SR or replica).
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<xenvault_pool::Error> for Error {
    fn from(e: xenvault_pool::Error) -> Self {
        Error::Engine(e.into())
    }
}

impl Error {
    /// The XenAPI error code, when a host refused a call.
    pub fn xapi_code(&self) -> Option<&str> {
        match self {
            Error::Engine(e) => e.xapi_code(),
            Error::Xapi(e) => e.failure().map(|f| f.code.as_str()),
            _ => None,
        }
    }

    /// A refused login (exit code of the command line, the service's run status).
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Engine(e) if e.is_auth())
    }
}
