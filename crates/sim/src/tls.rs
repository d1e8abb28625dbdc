//! The host certificate: self-signed, made once and kept in the state dir, served
//! on HTTPS and NBD and reported by `VDI.get_nbd_info`.

use std::fs;
use std::io;
use std::path::Path;
use xenvault_tls::ServerIdentity;

/// DNS name in the certificate (what `get_nbd_info` calls the subject).
pub const SUBJECT: &str = "localhost";

/// Loads `cert.pem`/`key.pem` from `dir`, creating them on first start.
pub fn load_or_create(dir: &Path) -> io::Result<ServerIdentity> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(ServerIdentity { cert_pem: fs::read_to_string(cert_path)?, key_pem: fs::read_to_string(key_path)? });
    }
    let names = vec![SUBJECT.to_owned(), "127.0.0.1".to_owned(), "127.0.0.2".to_owned(), "::1".to_owned()];
    let cert = ServerIdentity::self_signed(names, SUBJECT).map_err(io::Error::other)?;
    fs::write(&key_path, &cert.key_pem)?;
    fs::write(&cert_path, &cert.cert_pem)?;
    Ok(cert)
}
