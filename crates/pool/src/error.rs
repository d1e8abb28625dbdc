//! Errors of pool operations.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Lookup(#[from] crate::inventory::LookupError),
    #[error("XenAPI: {0}")]
    Xapi(#[from] xenvault_xapi::Error),
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
}

impl Error {
    /// The XenAPI error code (`ErrorDescription[0]`), when the host refused a call.
    pub fn xapi_code(&self) -> Option<&str> {
        match self {
            Error::Xapi(e) => e.failure().map(|f| f.code.as_str()),
            _ => None,
        }
    }

    /// Credentials refused.
    pub fn is_auth(&self) -> bool {
        self.xapi_code() == Some("SESSION_AUTHENTICATION_FAILED")
    }
}
