//! The engine's typed errors.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Lookup(#[from] xenvault_pool::inventory::LookupError),
    #[error("XenAPI: {0}")]
    Xapi(#[from] xenvault_xapi::Error),
    #[error("NBD: {0}")]
    Nbd(#[from] xenvault_nbd::Error),
    #[error("repository: {0}")]
    Repo(#[from] xenvault_repo::Error),
    #[error("XVA: {0}")]
    Xva(String),
    /// A transfer that ended before its end (connection cut, short body).
    #[error("transfer interrupted: {0}")]
    Cut(String),
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
    #[error("{0}")]
    Hook(String),
    /// Another backup of the VM holds its lock (see [`crate::vm_lock`]).
    #[error("skipped: {0}")]
    VmBusy(String),
    /// The caller cancelled the job: the snapshot was removed, nothing committed.
    #[error("cancelled: the snapshot was removed and nothing was committed")]
    Cancelled,
}

/// Pool errors keep their kind: a refused call stays [`Error::Xapi`], so
/// [`Error::xapi_code`] and the fatal/auth tests see through them.
impl From<xenvault_pool::Error> for Error {
    fn from(e: xenvault_pool::Error) -> Self {
        match e {
            xenvault_pool::Error::Config(m) => Error::Config(m),
            xenvault_pool::Error::Lookup(e) => Error::Lookup(e),
            xenvault_pool::Error::Xapi(e) => Error::Xapi(e),
            xenvault_pool::Error::Protocol(m) => Error::Protocol(m),
        }
    }
}

impl Error {
    /// The XenAPI error code (`ErrorDescription[0]`), when the host refused a call.
    pub fn xapi_code(&self) -> Option<&str> {
        match self {
            Error::Xapi(e) => e.failure().map(|f| f.code.as_str()),
            _ => None,
        }
    }

    /// Credentials refused: the CLI exits with its AUTH code.
    pub fn is_auth(&self) -> bool {
        matches!(self.xapi_code(), Some("SESSION_AUTHENTICATION_FAILED"))
            || matches!(self, Error::Repo(xenvault_repo::Error::WrongKey | xenvault_repo::Error::KeyNeeded))
    }

    /// Errors no other strategy or try would avoid: the repository failing, a bad
    /// configuration. Everything else (host refusals, cut or malformed transfers) may
    /// go better with another strategy or another try.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Repo(_) | Error::Config(_) | Error::Lookup(_) | Error::Hook(_) | Error::VmBusy(_) | Error::Cancelled
        )
    }
}
