//! Opening the several NBD connections a disk is read over, from what
//! `VDI.get_nbd_info` returned.

use xenvault_nbd::{ConnectOptions, MultiReader, MultiReaderConfig, ServerTrust, TlsOptions};

use crate::error::Error;
use xenvault_pool::records::NbdInfo;

/// xapi-nbd serves at most this many connections per host.
pub const MAX_CONNECTIONS: usize = 16;
/// Re-opens allowed per connection after a cut link.
const RECONNECTS: u32 = 8;
/// Largest single read: amortises a round trip, spreads well over connections.
pub const PIECE: u32 = 2 << 20;

/// Connects to the first endpoint offered, over TLS with the host certificate it came
/// with (plain when it gave none: a network with purpose `insecure_nbd`).
pub async fn connect(endpoints: &[NbdInfo], connections: usize) -> Result<MultiReader, Error> {
    let endpoint =
        endpoints.first().ok_or_else(|| Error::Protocol("VDI.get_nbd_info offered no NBD endpoint".into()))?;
    let mut options = ConnectOptions::new(endpoint.address.clone(), endpoint.port, endpoint.exportname.clone());
    if !endpoint.cert.is_empty() {
        let server_name = if endpoint.subject.is_empty() { endpoint.address.clone() } else { endpoint.subject.clone() };
        options = options
            .with_tls(TlsOptions { server_name, trust: ServerTrust::PemPinOrCa(endpoint.cert.clone().into_bytes()) });
    }
    let connections = connections.clamp(1, MAX_CONNECTIONS);
    let config = MultiReaderConfig {
        connections,
        piece_size: PIECE,
        in_flight: connections * 4,
        reconnects: RECONNECTS,
        ordered: true,
    };
    Ok(MultiReader::connect(options, config).await?)
}
