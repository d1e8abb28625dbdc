//! rustls configurations for talking to a pool. Always built with the ring provider
//! explicitly: the dependency graph may hold two providers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

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
        let digits: String = fingerprint
            .chars()
            .filter(|c| !matches!(c, ':' | ' '))
            .collect::<String>();
        let bytes = hex::decode(&digits)
            .map_err(|e| Error::Config(format!("fingerprint {fingerprint:?} is not hex: {e}")))?;
        let pin: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            Error::Config(format!(
                "a SHA-256 fingerprint has 32 bytes, got {}",
                b.len()
            ))
        })?;
        Ok(TlsMode::PinSha256(pin))
    }
}

/// SHA-256 of a certificate's DER bytes, as colon-separated uppercase hex.
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn client_config(mode: &TlsMode) -> Result<ClientConfig, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS protocol versions: {e}")))?;
    let config = match mode {
        TlsMode::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::Config("no usable system CA certificates".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Config(format!("CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Config("the CA PEM holds no certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::PinSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: Some(*pin),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: None,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts the certificate whose fingerprint is pinned (or any, when `pin` is `None`), and
/// still checks the handshake signatures so the peer must hold the certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint {actual} does not match the pinned {expected}")]
struct FingerprintMismatch {
    actual: String,
    expected: String,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        if Sha256::digest(end_entity.as_ref()).as_slice() == pin {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = FingerprintMismatch {
            actual: fingerprint_sha256(end_entity.as_ref()),
            expected: pin
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parsing() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            TlsMode::pin_sha256_hex(&hex64).ok(),
            Some(TlsMode::PinSha256([0xab; 32]))
        );
        assert_eq!(
            TlsMode::pin_sha256_hex(&colons).ok(),
            Some(TlsMode::PinSha256([0xab; 32]))
        );
        assert!(TlsMode::pin_sha256_hex("abcd").is_err());
        assert!(TlsMode::pin_sha256_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn bad_ca_pem_is_a_config_error() {
        assert!(matches!(
            client_config(&TlsMode::CaPem(b"nope".to_vec())),
            Err(Error::Config(_))
        ));
    }
}
