//! VHD delta: `/export_raw_vdi?format=vhd&base=` gives a differencing VHD holding only
//! the 2 MiB blocks that differ from the base snapshot; its sectors are written over the
//! base restore point. The VHD parser is synchronous, so it runs on a blocking thread
//! fed by the HTTP body through bounded channels.

use bytes::Bytes;
use futures::TryStreamExt;
use std::io::Read;

use crate::error::Error;
use crate::host::ByteStream;
use crate::records::Vdi;
use crate::store::DiskSink;
use crate::transfer::Progress;

/// Chunks of body or extents buffered between the stages.
const STAGE_DEPTH: usize = 8;

pub struct Delta {
    /// Bytes received from the host.
    pub read: u64,
    /// Bytes of the blocks the delta holds.
    pub changed: u64,
    pub block: u64,
}

/// Applies the delta VHD arriving in `body` to `sink`.
pub async fn read_delta(
    mut body: ByteStream,
    snapshot: &Vdi,
    sink: &DiskSink,
    key: &str,
    progress: &dyn Progress,
) -> Result<Delta, Error> {
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(STAGE_DEPTH);
    let (extent_tx, mut extent_rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(STAGE_DEPTH);
    let disk_size = snapshot.virtual_size;
    let parser = tokio::task::spawn_blocking(move || parse(ChannelReader::new(body_rx), disk_size, extent_tx));

    let pump = async {
        let mut read = 0u64;
        loop {
            match body.try_next().await {
                Ok(Some(data)) => {
                    read += data.len() as u64;
                    if body_tx.send(Ok(data)).await.is_err() {
                        break; // the parser stopped: its error tells why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = body_tx.send(Err(e.to_string())).await;
                    return Err(e);
                }
            }
        }
        drop(body_tx);
        Ok(read)
    };
    let apply = async {
        while let Some((offset, data)) = extent_rx.recv().await {
            let len = data.len() as u64;
            sink.write(offset, data).await?;
            progress.advance(key, len);
        }
        Ok::<(), Error>(())
    };
    let (read, applied) = futures::join!(pump, apply);
    let parsed = parser.await.map_err(|e| Error::Protocol(format!("VHD parser task: {e}")))?;
    let read = read?;
    applied?;
    let (changed, block) = parsed?;
    Ok(Delta { read, changed, block })
}

/// Parses the stream, sending every present run of sectors; returns (changed bytes, block size).
fn parse(
    input: ChannelReader,
    disk_size: u64,
    out: tokio::sync::mpsc::Sender<(u64, Bytes)>,
) -> Result<(u64, u64), Error> {
    let mut reader = xenvault_vhd::VhdStreamReader::new(input).map_err(vhd_error)?;
    if reader.disk_size() != disk_size {
        return Err(Error::Protocol(format!(
            "the delta VHD describes {} bytes, the disk has {disk_size}",
            reader.disk_size()
        )));
    }
    let block = u64::from(reader.header().block_size);
    let changed = (reader.present_blocks().count() as u64 * block).min(disk_size);
    while let Some(extent) = reader.next_extent().map_err(vhd_error)? {
        let item = (extent.offset, Bytes::copy_from_slice(extent.data));
        if out.blocking_send(item).is_err() {
            return Err(Error::Protocol("the repository writer stopped".into()));
        }
    }
    Ok((changed, block))
}

fn vhd_error(e: xenvault_vhd::Error) -> Error {
    // A stream that ends early is an interrupted transfer: worth another try.
    match e {
        xenvault_vhd::Error::Io(io) => Error::Cut(format!("VHD export: {io}")),
        xenvault_vhd::Error::Truncated(what) => Error::Cut(format!("VHD export ended early: {what}")),
        other => Error::Protocol(format!("bad VHD delta: {other}")),
    }
}

/// Blocking `Read` over the body chunks the async side sends.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>) -> Self {
        Self { rx, current: Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        buf[..n].copy_from_slice(&chunk);
        Ok(n)
    }
}
