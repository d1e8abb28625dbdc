//! Several NBD connections to one export (xapi allows up to 16 per host), used round
//! robin; a connection that drops is re-established and its read tried again, so a cut
//! connection costs one request, not the disk.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::RwLock;
use xenvault_nbd::{Client, ConnectOptions, TlsOptions, Trust};

use crate::error::Error;
use crate::records::NbdInfo;

/// xapi-nbd serves at most this many connections per host.
pub const MAX_CONNECTIONS: usize = 16;
/// Reconnects allowed for one read before the error is returned.
const RECONNECTS_PER_READ: u32 = 3;

pub struct NbdPool {
    options: ConnectOptions,
    slots: Vec<RwLock<Client>>,
    next: AtomicUsize,
}

impl NbdPool {
    /// Connects `connections` times to the first endpoint `VDI.get_nbd_info` offered,
    /// over TLS with the host certificate it returned (plain when it gave none:
    /// a network with purpose `insecure_nbd`).
    pub async fn connect(endpoints: &[NbdInfo], connections: usize) -> Result<Self, Error> {
        let endpoint = endpoints
            .first()
            .ok_or_else(|| Error::Protocol("VDI.get_nbd_info offered no NBD endpoint".into()))?;
        let mut options = ConnectOptions::new(endpoint.address.clone(), endpoint.port, endpoint.exportname.clone());
        if !endpoint.cert.is_empty() {
            let server_name = if endpoint.subject.is_empty() { endpoint.address.clone() } else { endpoint.subject.clone() };
            options = options.with_tls(TlsOptions { server_name, trust: Trust::Pem(endpoint.cert.clone().into_bytes()) });
        }
        let count = connections.clamp(1, MAX_CONNECTIONS);
        let clients = futures::future::try_join_all((0..count).map(|_| Client::connect(&options))).await?;
        Ok(Self { options, slots: clients.into_iter().map(RwLock::new).collect(), next: AtomicUsize::new(0) })
    }

    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    pub async fn read(&self, offset: u64, length: u64) -> Result<Bytes, Error> {
        let len = u32::try_from(length).map_err(|_| Error::Protocol(format!("NBD read of {length} bytes is too large")))?;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let slot = self.slots.get(index).ok_or_else(|| Error::Protocol("NBD pool is empty".into()))?;
        let mut reconnects = 0;
        loop {
            let result = slot.read().await.read(offset, len).await;
            match result {
                Ok(data) if data.len() as u64 == length => return Ok(data),
                Ok(data) => {
                    return Err(Error::Protocol(format!("NBD read at {offset} returned {} of {length} bytes", data.len())));
                }
                Err(e) if e.is_connection_lost() && reconnects < RECONNECTS_PER_READ => {
                    reconnects += 1;
                    tracing::info!("NBD connection {index} lost ({e}): reconnecting");
                    let mut client = slot.write().await;
                    // Another reader may have reconnected this slot already.
                    if client.failure().is_some() {
                        *client = Client::connect(&self.options).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Says goodbye on every connection (NBD_CMD_DISC); errors do not matter by then.
    pub async fn close(self) {
        for slot in self.slots {
            let _ = slot.into_inner().close().await;
        }
    }
}
