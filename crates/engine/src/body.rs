//! Disk and VM export bodies handed to the synchronous parsers (VHD, XVA).

use futures::TryStreamExt;
use xenvault_pool::host::ByteStream;

use crate::error::Error;

/// Body pieces buffered between the network and a blocking parser.
const BODY_DEPTH: usize = 8;

/// Hands `body` to a synchronous parser (VHD, XVA) running on a blocking thread: the
/// reader for that thread, and the future that pumps the body into it (resolving to
/// the bytes received). Bounded channels keep memory flat.
pub fn blocking_body(mut body: ByteStream) -> (BlockingBody, impl std::future::Future<Output = Result<u64, Error>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(BODY_DEPTH);
    let pump = async move {
        let mut read = 0u64;
        loop {
            match body.try_next().await {
                Ok(Some(data)) => {
                    read += data.len() as u64;
                    if tx.send(Ok(data)).await.is_err() {
                        break; // the parser stopped: its own error says why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return Err(e.into());
                }
            }
        }
        Ok(read)
    };
    (BlockingBody { rx, current: bytes::Bytes::new() }, pump)
}

/// Blocking `Read` over the body pieces [`blocking_body`] pumps.
pub struct BlockingBody {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl std::io::Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let piece = self.current.split_to(n);
        if let Some(target) = buf.get_mut(..n) {
            target.copy_from_slice(&piece);
        }
        Ok(n)
    }
}
