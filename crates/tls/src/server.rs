//! The server side: a rustls configuration presenting a PEM identity, and self-signed
//! identities for hosts that have no certificate of their own.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::{TlsError, certificates_from_pem, pem_fingerprint_sha256, ring_provider};

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct ServerIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerIdentity {
    /// Reads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1) from PEM files.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        Ok(ServerIdentity { cert_pem: read(cert)?, key_pem: read(key)? })
    }

    /// A fresh self-signed certificate for `names` (DNS names or IP addresses). Marked as a
    /// CA so that clients trusting it as their root (GnuTLS: libnbd, qemu) accept it.
    pub fn self_signed(names: Vec<String>, common_name: &str) -> Result<Self, TlsError> {
        let failed = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(ServerIdentity { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// SHA-256 of the first certificate in lowercase hex, as clients pin it.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        pem_fingerprint_sha256(self.cert_pem.as_bytes())
    }

    /// A server configuration (ring provider, safe protocol versions, no client
    /// certificates) presenting this identity.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = certificates_from_pem(self.cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Key(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        Ok(Arc::new(config))
    }
}
