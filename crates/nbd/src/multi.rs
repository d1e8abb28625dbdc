//! Reads many ranges of one export over several connections at once (latency dominates a single
//! connection on a WAN), with a bounded number of pieces in memory and reconnects on cut links.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Mutex;

use crate::client::{Client, ConnectOptions, ExportInfo};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct MultiReaderConfig {
    /// Connections to open (xapi allows 16 per host in total).
    pub connections: usize,
    /// Ranges are cut into pieces of at most this size (also capped by the server's maximum).
    pub piece_size: u32,
    /// Pieces requested or waiting to be consumed at once, over all connections: memory stays
    /// below `in_flight * piece_size`.
    pub in_flight: usize,
    /// How many times each connection is re-opened after its link was cut.
    pub reconnects: u32,
    /// Deliver pieces in offset order (otherwise as they arrive).
    pub ordered: bool,
}

impl Default for MultiReaderConfig {
    fn default() -> Self {
        Self {
            connections: 4,
            piece_size: 4 << 20,
            in_flight: 16,
            reconnects: 1,
            ordered: true,
        }
    }
}

struct Slot {
    client: Arc<Client>,
    generation: u64,
    reconnects: u32,
}

pub struct MultiReader {
    opts: ConnectOptions,
    config: MultiReaderConfig,
    info: ExportInfo,
    slots: Vec<Mutex<Slot>>,
}

impl MultiReader {
    /// Opens up to `config.connections` connections to the export. Goes on with fewer when some
    /// are refused (xapi drops connections past its per-host limit); fails only if none opens.
    pub async fn connect(opts: ConnectOptions, config: MultiReaderConfig) -> Result<MultiReader> {
        let n = config.connections.max(1);
        let mut clients = Vec::with_capacity(n);
        let mut first_error = None;
        for attempt in futures::future::join_all((0..n).map(|_| Client::connect(&opts))).await {
            match attempt {
                Ok(c) => clients.push(c),
                Err(e) => {
                    tracing::info!("nbd: one of {n} connections failed: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(info) = clients.first().map(|c| c.info().clone()) else {
            return Err(first_error.unwrap_or(Error::Closed("before any connection opened")));
        };
        let slots = clients
            .into_iter()
            .map(|c| {
                Mutex::new(Slot {
                    client: Arc::new(c),
                    generation: 0,
                    reconnects: 0,
                })
            })
            .collect();
        Ok(MultiReader {
            opts,
            config,
            info,
            slots,
        })
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Connections actually open (may be fewer than asked for).
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    /// Reads `(offset, len)` ranges as `(offset, bytes)` pieces of at most `piece_size`.
    pub fn read_ranges(
        &self,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> BoxStream<'_, Result<(u64, Bytes)>> {
        let piece = self.config.piece_size.clamp(1, self.info.max_request);
        let pieces: Vec<(u64, u32)> = ranges
            .into_iter()
            .flat_map(|(offset, len)| split(offset, len, piece))
            .collect();
        let reads = stream::iter(pieces.into_iter().enumerate())
            .map(move |(i, (offset, len))| self.read_piece(i % self.slots.len(), offset, len));
        let window = self.config.in_flight.max(1);
        if self.config.ordered {
            reads.buffered(window).boxed()
        } else {
            reads.buffer_unordered(window).boxed()
        }
    }

    /// Like `read_ranges`, handing each piece to `f`; stops at the first error from either side.
    pub async fn read_ranges_with<E: From<Error>>(
        &self,
        ranges: impl IntoIterator<Item = (u64, u64)>,
        mut f: impl FnMut(u64, Bytes) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut pieces = self.read_ranges(ranges);
        while let Some(piece) = pieces.next().await {
            let (offset, data) = piece?;
            f(offset, data)?;
        }
        Ok(())
    }

    /// Disconnects every connection cleanly.
    pub async fn close(self) {
        for slot in self.slots {
            if let Ok(client) = Arc::try_unwrap(slot.into_inner().client) {
                let _ = client.close().await;
            }
        }
    }

    async fn read_piece(&self, index: usize, offset: u64, len: u32) -> Result<(u64, Bytes)> {
        let Some(slot) = self.slots.get(index) else {
            return Err(Error::Malformed("connection index"));
        };
        loop {
            let (client, generation) = {
                let s = slot.lock().await;
                (s.client.clone(), s.generation)
            };
            match client.read(offset, len).await {
                Ok(data) => return Ok((offset, data)),
                Err(e) if e.is_connection_lost() => {
                    self.reconnect(index, slot, generation, e).await?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-opens connection `index` unless another piece already did since `seen_generation`.
    async fn reconnect(
        &self,
        index: usize,
        slot: &Mutex<Slot>,
        seen_generation: u64,
        cause: Error,
    ) -> Result<()> {
        let mut s = slot.lock().await;
        if s.generation != seen_generation {
            return Ok(());
        }
        let give_up = |last| Error::RetriesExhausted {
            index,
            attempts: s.reconnects,
            last: Box::new(last),
        };
        if s.reconnects >= self.config.reconnects {
            return Err(give_up(cause));
        }
        tracing::info!("nbd connection {index} lost ({cause}); reconnecting");
        let client = Client::connect(&self.opts).await.map_err(give_up)?;
        if client.size() != self.info.size {
            return Err(Error::Malformed("export size changed on reconnect"));
        }
        s.reconnects += 1;
        s.generation += 1;
        s.client = Arc::new(client);
        Ok(())
    }
}

/// Cuts `[offset, offset + len)` into pieces of at most `piece` bytes.
fn split(offset: u64, len: u64, piece: u32) -> impl Iterator<Item = (u64, u32)> {
    let piece = u64::from(piece.max(1));
    (0..len.div_ceil(piece)).map(move |i| (offset + i * piece, (len - i * piece).min(piece) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_range_exactly() {
        let parts: Vec<_> = split(100, 10, 4).collect();
        assert_eq!(parts, vec![(100, 4), (104, 4), (108, 2)]);
        assert_eq!(split(0, 0, 4).count(), 0);
    }
}
