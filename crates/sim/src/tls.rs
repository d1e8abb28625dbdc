//! The host certificate: self-signed, made once and kept in the state dir, served
//! on HTTPS and NBD and reported by `VDI.get_nbd_info`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// DNS name in the certificate (what `get_nbd_info` calls the subject).
pub const SUBJECT: &str = "localhost";

pub struct HostCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Loads `cert.pem`/`key.pem` from `dir`, creating them on first start.
pub fn load_or_create(dir: &Path) -> io::Result<HostCert> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(HostCert { cert_pem: fs::read_to_string(cert_path)?, key_pem: fs::read_to_string(key_path)? });
    }
    let names = vec![SUBJECT.to_owned(), "127.0.0.1".to_owned(), "127.0.0.2".to_owned(), "::1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).map_err(other)?;
    // Marked as a CA so clients that pin it as their trust root (qemu, GnuTLS) accept it.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().map_err(other)?;
    let certified = params.self_signed(&key).map_err(other)?;
    let cert = HostCert { cert_pem: certified.pem(), key_pem: key.serialize_pem() };
    fs::write(&key_path, &cert.key_pem)?;
    fs::write(&cert_path, &cert.cert_pem)?;
    Ok(cert)
}

/// A rustls server config (ring provider, as the workspace requires).
pub fn server_config(cert: &HostCert) -> io::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(other)?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(other)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(other)?;
    Ok(Arc::new(config))
}
