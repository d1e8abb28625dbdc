//! The host certificate: self-signed, made once and kept in the state dir, served
//! on HTTPS and NBD and reported by `VDI.get_nbd_info`.

use std::io;
use std::path::Path;
use xenvault_tls::ServerIdentity;

/// DNS name in the certificate (what `get_nbd_info` calls the subject).
pub const SUBJECT: &str = "localhost";

/// Loads `cert.pem`/`key.pem` from `dir`, creating them on first start.
pub fn load_or_create(dir: &Path) -> io::Result<ServerIdentity> {
    let names = vec![SUBJECT.to_owned(), "127.0.0.1".to_owned(), "127.0.0.2".to_owned(), "::1".to_owned()];
    ServerIdentity::load_or_create(&dir.join("cert.pem"), &dir.join("key.pem"), names, SUBJECT)
}
