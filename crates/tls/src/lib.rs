//! rustls configurations shared by the XenAPI, NBD and simulator clients, and by the
//! servers (simulator, serve-nbd).
//!
//! Every configuration is built with the ring provider named explicitly: the dependency graph
//! may hold two providers (ring and aws-lc-rs) and rustls then refuses to pick one.

use std::sync::Arc;

mod probe;
mod server;
pub use probe::server_fingerprint;
pub use server::ServerIdentity;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// How a client decides to trust the server's certificate: the one trust type of XenAPI,
/// NBD, storage and pool configurations. Stored (see [`TrustRecord`]) as
/// `{ mode = "verify" }`, `{ mode = "fingerprint", sha256 = "ab12…" }`, `{ mode = "ca", pem = "…" }`,
/// `{ mode = "pem-pin-or-ca", pem = "…" }` or `{ mode = "insecure" }`.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "TrustRecord", into = "TrustRecord")]
pub enum ServerTrust {
    /// The operating system's trust store.
    #[default]
    SystemRoots,
    /// Only these CA certificates (PEM).
    CaPem(Vec<u8>),
    /// Exactly the certificate with this SHA-256 fingerprint (of its DER form), whatever its
    /// name or issuer: what an administrator copies from the host console.
    PinSha256([u8; 32]),
    /// PEM certificates accepted both as exact pins and as CAs: xapi's `VDI.get_nbd_info`
    /// hands out the host's own (usually self-signed) leaf certificate.
    PemPinOrCa(Vec<u8>),
    /// Any certificate (still encrypted, not authenticated). Only when the user asked.
    Insecure,
}

impl std::fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerTrust::SystemRoots => f.write_str("SystemRoots"),
            ServerTrust::CaPem(_) => f.write_str("CaPem"),
            ServerTrust::PinSha256(pin) => write!(f, "PinSha256({})", colon_hex(pin)),
            ServerTrust::PemPinOrCa(_) => f.write_str("PemPinOrCa"),
            ServerTrust::Insecure => f.write_str("Insecure"),
        }
    }
}

impl ServerTrust {
    /// Pins the certificate whose SHA-256 fingerprint `text` gives as hex, with or without
    /// colons (`AB:CD:…`).
    pub fn pin_sha256_hex(text: &str) -> Result<Self, TlsError> {
        parse_sha256_fingerprint(text).map(ServerTrust::PinSha256)
    }

    /// The pinned fingerprint in lowercase hex, as pins are written.
    pub fn pinned_sha256_hex(&self) -> Option<String> {
        match self {
            ServerTrust::PinSha256(pin) => Some(hex::encode(pin)),
            _ => None,
        }
    }
}

/// The serialised form of a [`ServerTrust`]; pool configurations written before it replaced
/// their own type (`verify`, `fingerprint`, `insecure`) read unchanged.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
enum TrustRecord {
    Verify,
    Fingerprint { sha256: String },
    Ca { pem: String },
    PemPinOrCa { pem: String },
    Insecure,
}

impl TryFrom<TrustRecord> for ServerTrust {
    type Error = TlsError;

    fn try_from(record: TrustRecord) -> Result<Self, TlsError> {
        Ok(match record {
            TrustRecord::Verify => ServerTrust::SystemRoots,
            TrustRecord::Fingerprint { sha256 } => ServerTrust::pin_sha256_hex(&sha256)?,
            TrustRecord::Ca { pem } => ServerTrust::CaPem(pem.into_bytes()),
            TrustRecord::PemPinOrCa { pem } => ServerTrust::PemPinOrCa(pem.into_bytes()),
            TrustRecord::Insecure => ServerTrust::Insecure,
        })
    }
}

impl From<ServerTrust> for TrustRecord {
    fn from(trust: ServerTrust) -> Self {
        // PEM is ASCII text: nothing is lost.
        let text = |pem: Vec<u8>| String::from_utf8_lossy(&pem).into_owned();
        match trust {
            ServerTrust::SystemRoots => TrustRecord::Verify,
            ServerTrust::PinSha256(pin) => TrustRecord::Fingerprint { sha256: hex::encode(pin) },
            ServerTrust::CaPem(pem) => TrustRecord::Ca { pem: text(pem) },
            ServerTrust::PemPinOrCa(pem) => TrustRecord::PemPinOrCa { pem: text(pem) },
            ServerTrust::Insecure => TrustRecord::Insecure,
        }
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("bad PEM certificate: {0}")]
    Pem(String),
    #[error("the PEM text holds no certificate")]
    NoCertificate,
    #[error("unusable CA certificate: {0}")]
    Ca(String),
    #[error("no usable system CA certificates")]
    NoSystemRoots,
    #[error("fingerprint {text:?}: {reason}")]
    Fingerprint { text: String, reason: String },
    #[error("TLS protocol versions: {0}")]
    Protocol(rustls::Error),
    #[error(
        "certificate and private key: {0} (a key rustls cannot parse may load once converted: openssl pkcs8 -topk8 -nocrypt)"
    )]
    Key(String),
    #[error("making a certificate: {0}")]
    Generate(String),
}

/// The handshake error a pinned verifier gives for another certificate. It travels inside
/// `rustls::CertificateError::Other`; its Display names both fingerprints.
#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint {actual} does not match the pinned {expected}")]
pub struct FingerprintMismatch {
    pub actual: String,
    pub expected: String,
}

/// The ring crypto provider, named explicitly.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration (ring provider, safe protocol versions, no client certificate)
/// that checks the server as `trust` says.
pub fn client_config(trust: &ServerTrust) -> Result<ClientConfig, TlsError> {
    let provider = ring_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let algorithms = provider.signature_verification_algorithms;
    let accept = match trust {
        ServerTrust::SystemRoots => {
            return Ok(builder.with_root_certificates(system_roots()?).with_no_client_auth());
        }
        ServerTrust::CaPem(pem) => {
            return Ok(builder.with_root_certificates(roots_from_pem(pem)?).with_no_client_auth());
        }
        ServerTrust::PinSha256(pin) => Accept::Sha256(*pin),
        ServerTrust::PemPinOrCa(pem) => pin_or_ca(pem, provider)?,
        ServerTrust::Insecure => Accept::Any,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { accept, algorithms }))
        .with_no_client_auth())
}

/// Every certificate of a PEM text; at least one.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// SHA-256 of the first certificate of a PEM text in lowercase hex, as pins are written.
pub fn pem_fingerprint_sha256(pem: &[u8]) -> Result<String, TlsError> {
    let certs = certificates_from_pem(pem)?;
    Ok(certs.first().map(|c| hex::encode(Sha256::digest(c))).unwrap_or_default())
}

/// A trust store holding exactly the CA certificates of a PEM text.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates_from_pem(pem)? {
        roots.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    Ok(roots)
}

/// The operating system's CA certificates.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// SHA-256 of a certificate's DER bytes, as colon-separated uppercase hex.
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    colon_hex(&Sha256::digest(cert_der))
}

/// Parses a SHA-256 fingerprint written as hex, with or without colons or spaces (`AB:CD:...`).
pub fn parse_sha256_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let invalid = |reason: String| TlsError::Fingerprint { text: text.to_owned(), reason };
    let bytes = hex::decode(&digits).map_err(|e| invalid(format!("not hex: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| invalid(format!("a SHA-256 fingerprint has 32 bytes, got {}", b.len())))
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn pin_or_ca(pem: &[u8], provider: Arc<CryptoProvider>) -> Result<Accept, TlsError> {
    let pinned = certificates_from_pem(pem)?;
    let mut roots = RootCertStore::empty();
    // A leaf that cannot serve as a trust anchor still works as a pin.
    let (_added, _ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
    let ca = if roots.is_empty() {
        None
    } else {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().ok()
    };
    Ok(Accept::PinOrCa { pinned, ca })
}

/// Which end-entity certificates a [`Verifier`] takes.
#[derive(Debug)]
enum Accept {
    Any,
    Sha256([u8; 32]),
    PinOrCa { pinned: Vec<CertificateDer<'static>>, ca: Option<Arc<WebPkiServerVerifier>> },
}

/// Checks the certificate as `accept` says, and always checks the handshake signatures, so
/// the peer must hold the accepted certificate's key.
#[derive(Debug)]
struct Verifier {
    accept: Accept,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.accept {
            Accept::Any => Ok(ServerCertVerified::assertion()),
            Accept::Sha256(pin) if Sha256::digest(end_entity.as_ref()).as_slice() == pin => {
                Ok(ServerCertVerified::assertion())
            }
            Accept::Sha256(pin) => {
                let mismatch =
                    FingerprintMismatch { actual: fingerprint_sha256(end_entity.as_ref()), expected: colon_hex(pin) };
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(mismatch)))))
            }
            Accept::PinOrCa { pinned, .. } if pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                Ok(ServerCertVerified::assertion())
            }
            Accept::PinOrCa { ca: Some(ca), .. } => {
                ca.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Accept::PinOrCa { ca: None, .. } => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    struct Host {
        der: CertificateDer<'static>,
        pem: String,
        config: Arc<ServerConfig>,
    }

    fn host(name: &str) -> Host {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
        let der = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("server config");
        Host { der, pem: certified.cert.pem(), config: Arc::new(config) }
    }

    /// Runs a whole handshake in memory; the client's error when it refuses the server.
    fn handshake(host: &Host, trust: &ServerTrust, name: &str) -> Result<(), rustls::Error> {
        let config = Arc::new(client_config(trust).expect("client config"));
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let mut client = ClientConnection::new(config, name)?;
        let mut server = ServerConnection::new(host.config.clone())?;
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            wire.clear();
            client.write_tls(&mut wire).expect("client write");
            server.read_tls(&mut wire.as_slice()).expect("server read");
            if let Err(e) = server.process_new_packets() {
                // The server's alert tells the client why; the client's error is the cause.
                wire.clear();
                let _ = server.write_tls(&mut wire);
                client.read_tls(&mut wire.as_slice()).expect("client read alert");
                return client.process_new_packets().map(drop).and(Err(e));
            }
            wire.clear();
            server.write_tls(&mut wire).expect("server write");
            client.read_tls(&mut wire.as_slice()).expect("client read");
            client.process_new_packets()?;
        }
        Ok(())
    }

    #[test]
    fn right_pin_is_accepted_whatever_the_name() {
        let host = host("xen1.example");
        let pin = parse_sha256_fingerprint(&fingerprint_sha256(&host.der)).expect("pin");
        handshake(&host, &ServerTrust::PinSha256(pin), "other.name").expect("pinned handshake");
    }

    #[test]
    fn wrong_pin_is_refused_naming_both_fingerprints() {
        let host = host("xen1.example");
        let wrong = [7; 32];
        let err = handshake(&host, &ServerTrust::PinSha256(wrong), "xen1.example")
            .expect_err("a wrong pin must fail the handshake");
        let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = &err else {
            panic!("not a certificate error: {err:?}");
        };
        let message = other.0.to_string();
        assert_eq!(
            message,
            format!(
                "certificate fingerprint {} does not match the pinned {}",
                fingerprint_sha256(&host.der),
                vec!["07"; 32].join(":")
            )
        );
    }

    #[test]
    fn pem_pin_accepts_that_certificate_and_refuses_another() {
        let host_a = host("a.example");
        let host_b = host("b.example");
        let trust = ServerTrust::PemPinOrCa(host_a.pem.clone().into_bytes());
        handshake(&host_a, &trust, "a.example").expect("pinned by PEM");
        let err = handshake(&host_b, &trust, "b.example").expect_err("another certificate");
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn ca_pem_checks_the_name() {
        let host = host("a.example");
        let trust = ServerTrust::CaPem(host.pem.clone().into_bytes());
        handshake(&host, &trust, "a.example").expect("trusted by its CA");
        let err = handshake(&host, &trust, "b.example").expect_err("wrong name");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })),
            "{err:?}"
        );
        assert!(matches!(client_config(&ServerTrust::CaPem(b"nope".to_vec())), Err(TlsError::NoCertificate)));
    }

    #[test]
    fn insecure_accepts_any_certificate() {
        let host = host("a.example");
        handshake(&host, &ServerTrust::Insecure, "z.example").expect("insecure handshake");
    }

    #[test]
    fn fingerprint_parsing() {
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_sha256_fingerprint(&"ab".repeat(32)).ok(), Some([0xab; 32]));
        assert_eq!(parse_sha256_fingerprint(&colons).ok(), Some([0xab; 32]));
        let short = parse_sha256_fingerprint("abcd").expect_err("too short");
        assert!(short.to_string().contains("has 32 bytes, got 2"), "{short}");
        assert!(parse_sha256_fingerprint(&"zz".repeat(32)).is_err());
    }

    /// A pool entry as `config.toml` held it before this type: `tls` on its own table.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Entry {
        tls: ServerTrust,
    }

    #[test]
    fn trust_reads_the_stored_pool_forms_and_round_trips() {
        let read = |text: &str| toml::from_str::<Entry>(text).map(|e| e.tls);
        let pin = "ab".repeat(32);
        assert_eq!(read("[tls]\nmode = \"verify\"").unwrap(), ServerTrust::SystemRoots);
        assert_eq!(read("[tls]\nmode = \"insecure\"").unwrap(), ServerTrust::Insecure);
        let pinned = read(&format!("[tls]\nmode = \"fingerprint\"\nsha256 = \"{pin}\"")).unwrap();
        assert_eq!(pinned, ServerTrust::PinSha256([0xab; 32]));
        assert_eq!(pinned.pinned_sha256_hex().as_deref(), Some(pin.as_str()));
        let bad = read("[tls]\nmode = \"fingerprint\"\nsha256 = \"abc\"").unwrap_err();
        assert!(bad.to_string().contains("fingerprint"), "{bad}");
        assert!(read("[tls]\nmode = \"trust-me\"").is_err());
        for tls in [pinned, ServerTrust::CaPem(b"-----BEGIN CERTIFICATE-----\n".to_vec()), ServerTrust::Insecure] {
            let entry = Entry { tls };
            assert_eq!(toml::from_str::<Entry>(&toml::to_string(&entry).unwrap()).unwrap(), entry);
        }
    }
}
