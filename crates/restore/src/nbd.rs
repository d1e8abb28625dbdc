//! Instant access: a stored disk served over NBD (modern newstyle), read-only or with a
//! throw-away copy-on-write overlay held in memory.

use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use xenvault_nbd::proto::{STATE_HOLE, STATE_ZERO};
use xenvault_nbd::{Export, ExportResolver, Extent, Refusal};
use xenvault_repo::DiskReader;

/// Granularity of the overlay: a write copies in the surrounding block first.
const OVERLAY_BLOCK: u64 = 64 << 10;

/// A stored disk as an NBD export. With an overlay, writes land in memory and are lost
/// when the export goes away; the repository is never written.
pub struct DiskExport {
    reader: Arc<DiskReader>,
    overlay: Option<Mutex<HashMap<u64, Vec<u8>>>>,
}

impl DiskExport {
    pub fn read_only(reader: Arc<DiskReader>) -> Self {
        DiskExport { reader, overlay: None }
    }

    pub fn with_overlay(reader: Arc<DiskReader>) -> Self {
        DiskExport { reader, overlay: Some(Mutex::new(HashMap::new())) }
    }

    /// Bytes of the overlay (memory held by writes so far).
    pub fn overlay_bytes(&self) -> u64 {
        self.overlay.as_ref().map_or(0, |o| o.lock().unwrap_or_else(|p| p.into_inner()).len() as u64 * OVERLAY_BLOCK)
    }

    fn block_len(&self, block: u64) -> usize {
        (self.reader.size() - block * OVERLAY_BLOCK).min(OVERLAY_BLOCK) as usize
    }

    fn overlay_block(&self, block: u64) -> Option<Vec<u8>> {
        self.overlay.as_ref()?.lock().unwrap_or_else(|p| p.into_inner()).get(&block).cloned()
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        let mut buf = vec![0u8; len as usize];
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / OVERLAY_BLOCK;
            let within = (at % OVERLAY_BLOCK) as usize;
            let n = (self.block_len(block) - within).min(buf.len() - done);
            let out = buf.get_mut(done..done + n).ok_or_else(|| io::Error::other("read range"))?;
            match self.overlay_block(block) {
                Some(data) => {
                    out.copy_from_slice(data.get(within..within + n).ok_or_else(|| io::Error::other("overlay block"))?)
                }
                None => self.reader.read_at(at, out).await.map_err(io::Error::other)?,
            }
            done += n;
        }
        Ok(buf.into())
    }

    async fn write(&self, offset: u64, data: Bytes) -> io::Result<()> {
        let overlay = self.overlay.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let block = at / OVERLAY_BLOCK;
            let within = (at % OVERLAY_BLOCK) as usize;
            let n = (self.block_len(block) - within).min(data.len() - done);
            let mut current = match self.overlay_block(block) {
                Some(b) => b,
                None => {
                    let mut b = vec![0u8; self.block_len(block)];
                    self.reader.read_at(block * OVERLAY_BLOCK, &mut b).await.map_err(io::Error::other)?;
                    b
                }
            };
            let src = data.get(done..done + n).ok_or_else(|| io::Error::other("write range"))?;
            current.get_mut(within..within + n).ok_or_else(|| io::Error::other("overlay block"))?.copy_from_slice(src);
            overlay.lock().unwrap_or_else(|p| p.into_inner()).insert(block, current);
            done += n;
        }
        Ok(())
    }

    /// Holes where the restore point stored no chunk and the overlay has no block.
    async fn extents(&self, offset: u64, len: u32) -> io::Result<Vec<Extent>> {
        let cs = self.reader.chunk_size();
        let end = offset.saturating_add(len.into()).min(self.reader.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let slot = at / cs;
            let next = ((slot + 1) * cs).min(end);
            let stored = !self.reader.chunk_id(slot).await.map_err(io::Error::other)?.is_zero();
            let written = self.overlay.as_ref().is_some_and(|o| {
                let o = o.lock().unwrap_or_else(|p| p.into_inner());
                (at / OVERLAY_BLOCK..next.div_ceil(OVERLAY_BLOCK)).any(|b| o.contains_key(&b))
            });
            let flags = if stored || written { 0 } else { STATE_HOLE | STATE_ZERO };
            match out.last_mut() {
                Some(last) if last.flags == flags => last.len += next - at,
                _ => out.push(Extent { offset: at, len: next - at, flags }),
            }
            at = next;
        }
        Ok(out)
    }
}

impl Export for DiskExport {
    fn size(&self) -> u64 {
        self.reader.size()
    }
    fn read_at(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Bytes>> {
        Box::pin(self.read(offset, len))
    }
    fn writable(&self) -> bool {
        self.overlay.is_some()
    }
    fn write_at(&self, offset: u64, data: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.write(offset, data))
    }
    fn block_status(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Vec<Extent>>> {
        Box::pin(self.extents(offset, len))
    }
}

/// Serves one export under any name (clients may ask for "" or the disk's name).
pub struct SingleExport {
    pub name: String,
    pub export: Arc<DiskExport>,
}

impl ExportResolver for SingleExport {
    fn resolve<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Export>, Refusal>> {
        let export: Arc<dyn Export> = self.export.clone();
        Box::pin(async move { Ok(export) })
    }
    fn list(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

/// The names a self-signed certificate for a server listening on `listen` (as given:
/// `host:port`, `[v6]:port`) and bound to `addr` should carry: loopback always, the host
/// as given and the bound address unless it is the unspecified one (0.0.0.0, ::), which
/// no client connects to by that name.
pub fn listener_names(listen: &str, addr: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h).trim_matches(['[', ']']);
    for name in [host.to_owned(), addr.ip().to_string()] {
        if !name.is_empty() && !names.contains(&name) && !addr.ip().is_unspecified() {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::listener_names;

    #[test]
    fn certificate_names_cover_loopback_and_the_address_clients_use() {
        let addr = "192.0.2.7:10810".parse().unwrap();
        assert_eq!(
            listener_names("nbd.example:10810", addr),
            ["localhost", "127.0.0.1", "::1", "nbd.example", "192.0.2.7"]
        );
        let any = "0.0.0.0:10810".parse().unwrap();
        assert_eq!(listener_names("0.0.0.0:10810", any), ["localhost", "127.0.0.1", "::1"]);
        let v6 = "[::1]:10810".parse().unwrap();
        assert_eq!(listener_names("[::1]:10810", v6), ["localhost", "127.0.0.1", "::1"]);
    }
}
