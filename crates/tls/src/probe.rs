//! Reading a server's certificate without trusting it: what `pool add` shows an
//! administrator before asking whether to pin it.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use sha2::{Digest, Sha256};

use crate::{ServerTrust, client_config};

/// The SHA-256 fingerprint (lowercase hex, as pins are written) of the certificate `host:port` presents.
pub fn server_fingerprint(host: &str, port: u16, timeout: Duration) -> io::Result<String> {
    let config = client_config(&ServerTrust::Insecure).map_err(io::Error::other)?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))?;
    let mut socket = TcpStream::connect_timeout(&addr, timeout)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut socket)?;
    }
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| io::Error::other("the server sent no certificate"))?;
    Ok(hex::encode(Sha256::digest(cert)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerIdentity;

    #[test]
    fn reads_the_fingerprint_of_a_self_signed_server() {
        let identity = ServerIdentity::self_signed(vec!["localhost".into()], "probe test").unwrap();
        let config = identity.server_config().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut socket).is_err() {
                    break;
                }
            }
        });
        let seen = server_fingerprint("127.0.0.1", port, Duration::from_secs(10)).unwrap();
        assert_eq!(seen, identity.fingerprint().unwrap());
        server.join().unwrap();
    }
}
