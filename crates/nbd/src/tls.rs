//! Client TLS options. xapi's `VDI.get_nbd_info` hands out the host's own (usually self-signed)
//! certificate, so a PEM given as trust is accepted both as an exact pin and as a CA.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use xenvault_tls::ServerTrust;

use crate::error::{Error, Result};

/// How the client decides to trust the server's certificate.
#[derive(Clone)]
pub enum Trust {
    /// PEM text holding the server certificate itself (as `get_nbd_info` returns it) or a CA.
    Pem(Vec<u8>),
    /// A ready-made rustls configuration.
    Config(Arc<ClientConfig>),
    /// Accept any certificate (still encrypted, not authenticated). Only when the user asked.
    Insecure,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trust::Pem(_) => "Pem",
            Trust::Config(_) => "Config",
            Trust::Insecure => "Insecure",
        })
    }
}

#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Name checked against the certificate (`subject` from `get_nbd_info`); an IP address works too.
    pub server_name: String,
    pub trust: Trust,
}

impl TlsOptions {
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.server_name.clone())
            .map_err(|e| Error::Tls(format!("bad server name {:?}: {e}", self.server_name)))
    }

    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let trust = match &self.trust {
            Trust::Config(config) => return Ok(config.clone()),
            Trust::Pem(pem) => ServerTrust::PemPinOrCa(pem.clone()),
            Trust::Insecure => ServerTrust::Insecure,
        };
        xenvault_tls::client_config(&trust).map(Arc::new).map_err(|e| Error::Tls(e.to_string()))
    }
}
