use std::io;
use std::sync::Arc;

use crate::proto;

/// Everything that can go wrong talking to an NBD server. Cloneable so that one lost connection can
/// fail every request that was in flight on it with the same cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("NBD connection i/o: {0}")]
    Io(Arc<io::Error>),
    #[error("NBD server closed the connection {0}")]
    Closed(&'static str),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("bad magic {found:#x} in {what} (expected {expected:#x})")]
    BadMagic { what: &'static str, expected: u64, found: u64 },
    #[error("NBD server speaks the oldstyle protocol; only fixed newstyle is supported")]
    Oldstyle,
    #[error("NBD server does not support the fixed newstyle handshake")]
    NotFixedNewstyle,
    #[error("NBD server requires TLS but the client was not configured for it")]
    TlsRequired,
    #[error("NBD server refused option {option}: {reply} {message:?}", option = proto::option_name(*.option), reply = proto::reply_name(*.reply))]
    OptionRefused { option: u32, reply: u32, message: String },
    #[error("NBD server answered option {option} with unexpected reply {reply:#x} for option {for_option}", option = proto::option_name(*.option))]
    UnexpectedOptionReply { option: u32, for_option: u32, reply: u32 },
    #[error("NBD server refused export {0:?} (closed the connection)")]
    ExportRefused(String),
    #[error("NBD {what} of {len} bytes exceeds the limit of {limit}")]
    Oversized { what: &'static str, len: u64, limit: u64 },
    #[error("malformed NBD {0}")]
    Malformed(&'static str),
    #[error("NBD reply for unknown handle {0:#x}")]
    UnknownHandle(u64),
    #[error("NBD server error {name} ({errno}){}", if message.is_empty() { String::new() } else { format!(": {message}") }, name = proto::errno_name(*.errno))]
    Server { errno: u32, message: String },
    #[error("NBD request out of range: offset {offset} + {len} > export size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("NBD export does not support {0}")]
    Unsupported(&'static str),
    #[error("NBD connection {index}: giving up after {attempts} reconnects: {last}")]
    RetriesExhausted { index: usize, attempts: u32, last: Box<Error> },
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Closed("in the middle of a message")
        } else {
            Error::Io(Arc::new(e))
        }
    }
}

impl Error {
    /// True when the connection itself is gone (worth reconnecting), as opposed to a refusal or an
    /// error the server reported for one request.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Closed(_))
    }

    /// The NBD errno when the server failed a request.
    pub fn errno(&self) -> Option<u32> {
        match self {
            Error::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
