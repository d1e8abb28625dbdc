//! Loopback throughput of our client reading our server: both behaviours, TLS, 1 and 4
//! connections. `cargo run --release -p xenvault-nbd --example loopback_throughput [MiB]`

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use xenvault_nbd::fuzzing::{MemoryExport, OneExport};
use xenvault_nbd::{ConnectOptions, MultiReader, MultiReaderConfig, ServerConfig, ServerTrust, TlsOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(256);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let pem = cert.cert.pem().into_bytes();
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)?;
    let tls = Arc::new(tls);
    let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8 | 1).collect();
    let export = Arc::new(MemoryExport::new(data, false));

    for (label, config) in [
        ("xapi-compat, TLS", ServerConfig::xapi(Some(tls.clone()))),
        ("modern, TLS", ServerConfig::modern(Some(tls.clone()))),
        ("modern, plain", ServerConfig::modern(None)),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let with_tls = config.tls.is_some();
        tokio::spawn(xenvault_nbd::serve(listener, config, Arc::new(OneExport(export.clone())), async move {
            let _ = stopped.await;
        }));
        for connections in [1, 4] {
            let mut opts = ConnectOptions::new("127.0.0.1", port, "disk");
            if with_tls {
                opts = opts.with_tls(TlsOptions {
                    server_name: "localhost".into(),
                    trust: ServerTrust::PemPinOrCa(pem.clone()),
                });
            }
            let config = MultiReaderConfig {
                connections,
                piece_size: 2 << 20,
                in_flight: connections * 4,
                ..Default::default()
            };
            let reader = MultiReader::connect(opts, config).await?;
            let started = Instant::now();
            let mut pieces = reader.read_ranges([(0, mib << 20)]);
            let mut total = 0u64;
            while let Some(piece) = pieces.next().await {
                total += piece?.1.len() as u64;
            }
            let secs = started.elapsed().as_secs_f64();
            println!("{label:18} {connections} conn: {:7.0} MiB/s", total as f64 / secs / f64::from(1 << 20));
            drop(pieces);
            reader.close().await;
        }
        let _ = stop.send(());
    }
    Ok(())
}
