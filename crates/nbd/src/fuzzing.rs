//! Entry points for the `nbd` fuzz target (and its smoke test): arbitrary bytes are played as the
//! server's side to our client, and as the client's side to our server.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::{Client, ConnectOptions, handshake};
use crate::server::{Export, ExportResolver, Refusal, Server, ServerConfig};

/// A peer that says `input` and ignores what it is told.
pub struct Scripted {
    input: Vec<u8>,
    pos: usize,
}

impl Scripted {
    pub fn new(input: &[u8]) -> Self {
        Self { input: input.to_vec(), pos: 0 }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An in-memory export, writable when asked.
pub struct MemoryExport {
    data: Mutex<Vec<u8>>,
    writable: bool,
}

impl MemoryExport {
    pub fn new(data: Vec<u8>, writable: bool) -> Self {
        Self { data: Mutex::new(data), writable }
    }
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

fn range(offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    Ok(start..start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?)
}

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        self.data.lock().map(|d| d.len() as u64).unwrap_or_default()
    }
    fn read_at(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Bytes>> {
        let data = self.data.lock().map_err(|_| io::Error::other("poisoned")).and_then(|d| {
            d.get(range(offset, len as usize)?).map(Bytes::copy_from_slice).ok_or(io::ErrorKind::InvalidInput.into())
        });
        Box::pin(async move { data })
    }
    fn writable(&self) -> bool {
        self.writable
    }
    fn write_at(&self, offset: u64, buf: Bytes) -> BoxFuture<'_, io::Result<()>> {
        let done = self.data.lock().map_err(|_| io::Error::other("poisoned")).and_then(|mut d| {
            let target = d.get_mut(range(offset, buf.len())?).ok_or(io::ErrorKind::InvalidInput)?;
            target.copy_from_slice(&buf);
            Ok(())
        });
        Box::pin(async move { done })
    }
}

/// Resolves every name to the same export.
pub struct OneExport(pub Arc<dyn Export>);

impl ExportResolver for OneExport {
    fn resolve<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Export>, Refusal>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
    fn list(&self) -> Vec<String> {
        vec!["disk".into()]
    }
}

thread_local! {
    /// One runtime per thread for every input: building one per input cost more than the
    /// conversation. Tasks an input leaves behind are its client's and server's, which end
    /// with them (`block_on` returns once both are done or dropped).
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread().build().ok();
}

fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    RUNTIME.with(|rt| rt.as_ref().map(|rt| rt.block_on(f)))
}

/// The export every input is served: 1 MiB, read-only or writable, shared by all inputs
/// (allocating and filling 1 MiB per input was most of the target's time). What inputs
/// write changes only the data later inputs read, never the protocol's path.
fn shared_export(writable: bool) -> Arc<dyn Export> {
    static EXPORTS: std::sync::OnceLock<[Arc<dyn Export>; 2]> = std::sync::OnceLock::new();
    let exports = EXPORTS
        .get_or_init(|| [false, true].map(|w| Arc::new(MemoryExport::new(vec![0x5a; 1 << 20], w)) as Arc<dyn Export>));
    exports[usize::from(writable)].clone()
}

/// `data` is everything the server says: greeting, option replies, then transmission replies to a
/// read, a block status query and a write.
pub fn client(data: &[u8]) {
    block_on(async {
        let opts = ConnectOptions::new("fuzz", 0, "disk");
        let Ok((stream, info)) = handshake(Box::new(Scripted::new(data)), &opts).await else {
            return;
        };
        let client = Client::start(stream, info, None);
        let len = client.size().min(64 << 10) as u32;
        let _ = futures::join!(client.read(0, len), client.block_status(0, len), client.write(0, &[1; 512]));
    });
}

/// `data` is everything the client says (first byte picks the behaviour), served from 1 MiB.
pub fn server(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let config = if mode & 1 == 0 { ServerConfig::xapi(None) } else { ServerConfig::modern(None) };
    let server = Server::new(config, Arc::new(OneExport(shared_export(mode & 2 != 0))));
    block_on(server.handle(Scripted::new(data)));
}
