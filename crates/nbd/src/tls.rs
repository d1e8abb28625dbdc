//! Client TLS options. xapi's `VDI.get_nbd_info` hands out the host's own (usually self-signed)
//! certificate: trust it with `ServerTrust::PemPinOrCa`, accepted both as an exact pin and as a CA.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use xenvault_tls::ServerTrust;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Name checked against the certificate (`subject` from `get_nbd_info`); an IP address works too.
    pub server_name: String,
    pub trust: ServerTrust,
}

impl TlsOptions {
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.server_name.clone())
            .map_err(|e| Error::Tls(format!("bad server name {:?}: {e}", self.server_name)))
    }

    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>> {
        xenvault_tls::client_config(&self.trust).map(Arc::new).map_err(|e| Error::Tls(e.to_string()))
    }
}
