use xenvault_xapi_wire::{Failure, WireError};

/// Everything a XenAPI call or transfer can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// xapi answered with an `ErrorDescription`; match on `code` (see `xenvault_xapi_wire::codes`).
    #[error("XenAPI failure: {0}")]
    Failure(#[from] Failure),
    /// The TLS handshake failed (unknown CA, pinned fingerprint mismatch, ...).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The host could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// A transfer moved no byte for the client's `transfer_idle_timeout`: the host stopped
    /// sending an export, or stopped reading or answering an import.
    #[error("no data from {host} for {} s during {transfer}", .idle.as_secs_f64())]
    Stalled { host: String, transfer: String, idle: std::time::Duration },
    /// The connection broke or the request could not be sent.
    #[error("transport error: {0}")]
    Transport(String),
    /// The host answered with an HTTP status that is not success.
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// The answer could not be understood.
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("not logged in")]
    NotLoggedIn,
    /// Waiting on a task was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Failure(f) => Some(f),
            _ => None,
        }
    }

    /// Whether this is a XenAPI failure with the given code.
    pub fn is_failure(&self, code: &str) -> bool {
        self.failure().is_some_and(|f| f.code == code)
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        Error::Malformed(msg.into())
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Malformed(e.to_string())
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        let message = chain_message(&e);
        if let Some(tls) = find_rustls_error(&e) {
            let url = e.url().map(|u| format!("{}: ", u.origin().ascii_serialization()));
            Error::Tls(format!("{}{}", url.unwrap_or_default(), tls_message(tls)))
        } else if e.is_timeout() {
            Error::Timeout(message)
        } else if e.is_connect() {
            Error::Connect(message)
        } else {
            Error::Transport(message)
        }
    }
}

/// reqwest's own message is terse ("error sending request"): append the causes.
fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// rustls shows its `Other` certificate errors with Debug; ours (pin mismatch) read better
/// with Display.
fn tls_message(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("invalid peer certificate: {}", other.0)
        }
        other => other.to_string(),
    }
}

/// The rustls error behind a failed request. `io::Error::source` skips the error it wraps,
/// so look inside those explicitly.
fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}
