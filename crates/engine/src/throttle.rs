//! A job's speed limit: one budget of bytes per second shared by every read from the
//! pool (NBD reads, VHD delta, raw and XVA exports), whatever VM, disk or connection
//! does the read. Each read books its bytes on one timeline (when the bytes booked so far
//! are paid for at the rate) and waits until its own bytes are paid for, so readers
//! running at once share the rate instead of each getting it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use xenvault_pool::host::ByteStream;

use crate::error::Error;

/// A speed limit shared by clones (cheap to clone).
#[derive(Clone)]
pub struct RateLimit {
    inner: Arc<Inner>,
}

struct Inner {
    bytes_per_sec: u64,
    /// When the bytes booked so far are paid for; in the past when the limit is idle.
    paid_until: Mutex<Instant>,
    /// Time readers spent waiting, summed over readers (what the limit cost).
    waited_nanos: AtomicU64,
    /// Bytes that went through the limit.
    bytes: AtomicU64,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("bytes_per_sec", &self.inner.bytes_per_sec).finish()
    }
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Result<Self, Error> {
        if bytes_per_sec == 0 {
            return Err(Error::Config("a speed limit must be at least 1 byte per second".into()));
        }
        Ok(RateLimit {
            inner: Arc::new(Inner {
                bytes_per_sec,
                paid_until: Mutex::new(Instant::now()),
                waited_nanos: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            }),
        })
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.inner.bytes_per_sec
    }

    /// Waits until `bytes` more fit in the limit.
    pub async fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.inner.bytes_per_sec as f64);
        let now = Instant::now();
        let due = {
            let mut paid_until = self.inner.paid_until.lock().unwrap_or_else(|p| p.into_inner());
            // An idle limit saves no credit: a burst after a pause is limited too.
            *paid_until = (*paid_until).max(now) + cost;
            *paid_until
        };
        self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
        let wait = due.saturating_duration_since(now);
        self.inner.waited_nanos.fetch_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        tokio::time::sleep_until(due).await;
    }

    /// Time readers waited for the limit, summed over readers.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.inner.waited_nanos.load(Ordering::Relaxed))
    }

    /// Bytes read through the limit.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// `body` read no faster than the limit allows.
    pub fn throttle(&self, body: ByteStream) -> ByteStream {
        let limit = self.clone();
        body.then(move |piece| {
            let limit = limit.clone();
            async move {
                if let Ok(data) = &piece {
                    limit.take(data.len() as u64).await;
                }
                piece
            }
        })
        .boxed()
    }
}

/// `body` under `limit`, if there is one.
pub fn limited(body: ByteStream, limit: Option<&RateLimit>) -> ByteStream {
    match limit {
        Some(limit) => limit.throttle(body),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readers_at_once_share_the_rate() {
        let limit = RateLimit::new(1000).unwrap();
        let started = Instant::now();
        let readers = (0..4).map(|_| {
            let limit = limit.clone();
            async move {
                for _ in 0..5 {
                    limit.take(100).await;
                }
            }
        });
        futures::future::join_all(readers).await;
        // 2000 bytes at 1000 bytes/s: two seconds, whoever read them.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(limit.bytes(), 2000);
        assert!(limit.waited() >= Duration::from_secs(2), "{:?}", limit.waited());
        assert!(RateLimit::new(0).is_err());
    }
}
