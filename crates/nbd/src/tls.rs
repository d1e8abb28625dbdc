//! Client TLS configuration. xapi's `VDI.get_nbd_info` hands out the host's own (usually self-signed)
//! certificate, so a PEM given as trust is accepted both as an exact pin and as a CA.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

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

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsOptions {
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.server_name.clone())
            .map_err(|e| Error::Tls(format!("bad server name {:?}: {e}", self.server_name)))
    }

    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = ring();
        let verifier: Arc<dyn ServerCertVerifier> = match &self.trust {
            Trust::Config(config) => return Ok(config.clone()),
            Trust::Insecure => Arc::new(PinOrCa {
                pinned: Vec::new(),
                ca: None,
                algorithms: provider.signature_verification_algorithms,
                insecure: true,
            }),
            Trust::Pem(pem) => Arc::new(PinOrCa::from_pem(pem, provider.clone())?),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Accepts the exact pinned certificate, or a chain to one of the given certificates used as CAs.
#[derive(Debug)]
struct PinOrCa {
    pinned: Vec<CertificateDer<'static>>,
    ca: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    insecure: bool,
}

impl PinOrCa {
    fn from_pem(pem: &[u8], provider: Arc<CryptoProvider>) -> Result<Self> {
        let pinned = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("bad PEM certificate: {e}")))?;
        if pinned.is_empty() {
            return Err(Error::Tls("no certificate in the PEM text".into()));
        }
        let mut roots = RootCertStore::empty();
        // A leaf that cannot serve as a trust anchor still works as a pin.
        let (_added, _ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
        let algorithms = provider.signature_verification_algorithms;
        let ca = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .ok()
        };
        Ok(Self {
            pinned,
            ca,
            algorithms,
            insecure: false,
        })
    }
}

impl ServerCertVerifier for PinOrCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure
            || self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.ca {
            Some(ca) => ca.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
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
