//! How the client checks the pool's certificate; the configurations themselves come from
//! `xenvault-tls` (ring provider, pinning verifier).

use rustls::ClientConfig;
use xenvault_tls::ServerTrust;

pub use xenvault_tls::fingerprint_sha256;

use crate::Error;

/// How the host's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// The operating system's trust store.
    #[default]
    SystemRoots,
    /// These CA certificates (PEM), for example a pool's self-signed host certificate.
    CaPem(Vec<u8>),
    /// Accept exactly the certificate with this SHA-256 fingerprint (of its DER form), whatever
    /// its name or issuer: what an administrator copies from the host console.
    PinSha256([u8; 32]),
    /// No check at all. Only when the user asked for it.
    Insecure,
}

impl TlsMode {
    /// Parses a fingerprint written as hex, with or without colons (`AB:CD:...`).
    pub fn pin_sha256_hex(fingerprint: &str) -> Result<TlsMode, Error> {
        xenvault_tls::parse_sha256_fingerprint(fingerprint)
            .map(TlsMode::PinSha256)
            .map_err(|e| Error::Config(e.to_string()))
    }
}

pub(crate) fn client_config(mode: &TlsMode) -> Result<ClientConfig, Error> {
    let trust = match mode {
        TlsMode::SystemRoots => ServerTrust::SystemRoots,
        TlsMode::CaPem(pem) => ServerTrust::CaPem(pem.clone()),
        TlsMode::PinSha256(pin) => ServerTrust::PinSha256(*pin),
        TlsMode::Insecure => ServerTrust::Insecure,
    };
    xenvault_tls::client_config(&trust).map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parsing() {
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(TlsMode::pin_sha256_hex(&colons).ok(), Some(TlsMode::PinSha256([0xab; 32])));
        assert!(matches!(TlsMode::pin_sha256_hex("abcd"), Err(Error::Config(_))));
    }

    #[test]
    fn bad_ca_pem_is_a_config_error() {
        assert!(matches!(client_config(&TlsMode::CaPem(b"nope".to_vec())), Err(Error::Config(_))));
    }
}
