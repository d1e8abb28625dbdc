//! Reads many ranges of one export over several connections at once (latency dominates a single
//! connection on a WAN), with a bounded number of pieces in memory and reconnects on cut links.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{self, BoxStream, FuturesOrdered, FuturesUnordered, StreamExt};
use std::future::Future;
use tokio::sync::Mutex;

use crate::client::{Client, ConnectOptions, ExportInfo};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct MultiReaderConfig {
    /// Connections to open (xapi allows 16 per host in total).
    pub connections: usize,
    /// Ranges are cut into pieces of at most this size (also capped by the server's maximum).
    pub piece_size: u32,
    /// With `piece_size`, the bytes requested or waiting to be consumed at once, over all
    /// connections: about `in_flight * piece_size`. Smaller pieces (scattered ranges) get
    /// proportionally more requests in flight, up to `MAX_REQUESTS_PER_CONNECTION` each.
    pub in_flight: usize,
    /// How many times each connection is re-opened after its link was cut.
    pub reconnects: u32,
    /// Deliver pieces in offset order (otherwise as they arrive).
    pub ordered: bool,
}

impl Default for MultiReaderConfig {
    fn default() -> Self {
        Self { connections: 4, piece_size: 4 << 20, in_flight: 16, reconnects: 1, ordered: true }
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
            .map(|c| Mutex::new(Slot { client: Arc::new(c), generation: 0, reconnects: 0 }))
            .collect();
        Ok(MultiReader { opts, config, info, slots })
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Connections actually open (may be fewer than asked for).
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    /// Reads `(offset, len)` ranges as `(offset, bytes)` pieces of at most `piece_size`, keeping
    /// requests in flight up to a byte budget rather than a count, so that many small ranges
    /// (scattered changed blocks) keep the links as busy as a few large ones.
    pub fn read_ranges(&self, ranges: impl IntoIterator<Item = (u64, u64)>) -> BoxStream<'_, Result<(u64, Bytes)>> {
        let piece = self.config.piece_size.clamp(1, self.info.max_request);
        let pieces: Vec<(u64, u32)> = ranges.into_iter().flat_map(|(offset, len)| split(offset, len, piece)).collect();
        let budget = self.config.in_flight.max(1) as u64 * u64::from(piece);
        let max_requests = self.slots.len() * MAX_REQUESTS_PER_CONNECTION;
        let mut reads = pieces.into_iter().enumerate().map(move |(i, (offset, len))| {
            let read = self.read_piece(i % self.slots.len(), offset, len).map(move |result| (len, result));
            (len, read)
        });
        let running = if self.config.ordered {
            InFlight::Ordered(FuturesOrdered::new())
        } else {
            InFlight::Unordered(FuturesUnordered::new())
        };
        stream::unfold((running, 0u64), move |(mut running, mut bytes)| {
            // Top up to the budget (always at least one request) before waiting for a piece.
            while (bytes < budget && running.len() < max_requests) || running.len() == 0 {
                let Some((len, read)) = reads.next() else {
                    break;
                };
                bytes += u64::from(len);
                running.push(read);
            }
            async move {
                let (len, result) = running.next().await?;
                Some((result, (running, bytes - u64::from(len))))
            }
        })
        .boxed()
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
                Err(e) if e.is_connection_lost() => self.reconnect(index, slot, generation, e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-opens connection `index` unless another piece already did since `seen_generation`.
    async fn reconnect(&self, index: usize, slot: &Mutex<Slot>, seen_generation: u64, cause: Error) -> Result<()> {
        let mut s = slot.lock().await;
        if s.generation != seen_generation {
            return Ok(());
        }
        let give_up = |last| Error::RetriesExhausted { index, attempts: s.reconnects, last: Box::new(last) };
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

/// Requests one connection may have waiting, however small the pieces.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 32;

/// The reads in flight, delivered in the order they were asked or as they complete.
enum InFlight<F: Future> {
    Ordered(FuturesOrdered<F>),
    Unordered(FuturesUnordered<F>),
}

impl<F: Future> InFlight<F> {
    fn push(&mut self, read: F) {
        match self {
            InFlight::Ordered(reads) => reads.push_back(read),
            InFlight::Unordered(reads) => reads.push(read),
        }
    }

    fn len(&self) -> usize {
        match self {
            InFlight::Ordered(reads) => reads.len(),
            InFlight::Unordered(reads) => reads.len(),
        }
    }

    async fn next(&mut self) -> Option<F::Output> {
        match self {
            InFlight::Ordered(reads) => reads.next().await,
            InFlight::Unordered(reads) => reads.next().await,
        }
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

    use crate::server::{Export, ExportResolver, Refusal, ServerConfig};
    use futures::future::BoxFuture;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Slow reads of bytes that say where they are, counting how many run at once.
    #[derive(Default)]
    struct SlowDisk {
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Export for SlowDisk {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Bytes>> {
            Box::pin(async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
                Ok(Bytes::from(vec![(offset >> 12) as u8; len as usize]))
            })
        }
    }

    struct One(Arc<SlowDisk>);

    impl ExportResolver for One {
        fn resolve<'a>(&'a self, _: &'a str) -> BoxFuture<'a, std::result::Result<Arc<dyn Export>, Refusal>> {
            let disk: Arc<dyn Export> = self.0.clone();
            Box::pin(async move { Ok(disk) })
        }
    }

    #[tokio::test]
    async fn small_ranges_fill_the_byte_budget_and_arrive_in_order() {
        let disk = Arc::new(SlowDisk::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolver = Arc::new(One(disk.clone()));
        tokio::spawn(crate::server::serve(listener, ServerConfig::modern(None), resolver, std::future::pending()));
        let config =
            MultiReaderConfig { connections: 1, piece_size: 64 << 10, in_flight: 2, reconnects: 0, ordered: true };
        let reader = MultiReader::connect(ConnectOptions::new("127.0.0.1", port, "disk"), config).await.unwrap();
        // Scattered 4 KiB blocks: a count of 2 pieces would keep just 2 requests in flight.
        let ranges: Vec<(u64, u64)> = (0..64u64).map(|i| (i * 12288, 4096)).collect();
        let pieces: Vec<(u64, Bytes)> = reader.read_ranges(ranges.clone()).map(|p| p.unwrap()).collect().await;
        assert_eq!(pieces.iter().map(|(offset, data)| (*offset, data.len() as u64)).collect::<Vec<_>>(), ranges);
        assert!(pieces.iter().all(|(offset, data)| data.iter().all(|&b| b == (offset >> 12) as u8)));
        let most = disk.most.load(Ordering::SeqCst);
        assert!(most > 2, "at most {most} reads ran at once");
    }

    #[test]
    fn split_covers_range_exactly() {
        let parts: Vec<_> = split(100, 10, 4).collect();
        assert_eq!(parts, vec![(100, 4), (104, 4), (108, 2)]);
        assert_eq!(split(0, 0, 4).count(), 0);
    }
}
