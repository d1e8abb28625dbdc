//! How the client checks the pool's certificate: the product's one trust type,
//! [`ServerTrust`], and its configurations (ring provider, pinning verifier), from
//! `xenvault-tls`.

use rustls::ClientConfig;

pub use xenvault_tls::{ServerTrust, fingerprint_sha256};

use crate::Error;

pub(crate) fn client_config(trust: &ServerTrust) -> Result<ClientConfig, Error> {
    xenvault_tls::client_config(trust).map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_pem_is_a_config_error() {
        assert!(matches!(client_config(&ServerTrust::CaPem(b"nope".to_vec())), Err(Error::Config(_))));
    }
}
