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

    /// Reads `cert`/`key`, or on first start makes a self-signed identity for `names` and
    /// writes it there (the key readable by its owner only).
    pub fn load_or_create(
        cert: &std::path::Path,
        key: &std::path::Path,
        names: Vec<String>,
        common_name: &str,
    ) -> std::io::Result<Self> {
        if cert.exists() && key.exists() {
            return Self::load(cert, key);
        }
        let identity = Self::self_signed(names, common_name).map_err(std::io::Error::other)?;
        let write = |path: &std::path::Path, text: &str, mode: u32| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
        };
        write(key, &identity.key_pem, 0o600)?;
        write(cert, &identity.cert_pem, 0o644)?;
        Ok(identity)
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
