//! VHD delta: `/export_raw_vdi?format=vhd&base=` gives a differencing VHD holding only
//! the 2 MiB blocks that differ from the base snapshot; its sectors are written over the
//! base restore point. The VHD parser is synchronous: it runs on a blocking thread.

use bytes::Bytes;

use crate::body::{BlockingBody, blocking_body};
use crate::error::Error;
use crate::store::DiskSink;
use xenvault_pool::host::ByteStream;
use xenvault_pool::records::Vdi;
use xenvault_types::progress::Task;

/// Extents buffered between the parser and the repository writer.
const STAGE_DEPTH: usize = 8;

pub struct Delta {
    /// Bytes received from the host.
    pub read: u64,
    /// Bytes of the blocks the delta holds.
    pub changed: u64,
    pub block: u64,
}

/// Applies the delta VHD arriving in `body` to `sink`.
pub async fn read_delta(body: ByteStream, snapshot: &Vdi, sink: &DiskSink, task: &Task) -> Result<Delta, Error> {
    let (input, pump) = blocking_body(body);
    let (extent_tx, mut extent_rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(STAGE_DEPTH);
    let disk_size = snapshot.virtual_size;
    let (total_tx, total_rx) = tokio::sync::oneshot::channel();
    let parser = tokio::task::spawn_blocking(move || parse(input, disk_size, total_tx, extent_tx));
    let apply = async {
        // The parser announces the delta's size before its first extent (or fails).
        let total = total_rx.await.ok();
        if let Some(total) = total {
            task.set_total(total);
        }
        let mut applied = 0u64;
        while let Some((offset, data)) = extent_rx.recv().await {
            let len = data.len() as u64;
            sink.write(offset, data).await?;
            applied += len;
            task.advance(len);
        }
        // Sectors of present blocks that the delta leaves to the base are skipped, not read.
        if let Some(total) = total {
            task.advance(total.saturating_sub(applied));
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

/// Parses the stream, announcing the changed bytes on `total` and then sending every
/// present run of sectors; returns (changed bytes, block size).
fn parse(
    input: BlockingBody,
    disk_size: u64,
    total: tokio::sync::oneshot::Sender<u64>,
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
    let changed = (reader.present_blocks().count() as u64).saturating_mul(block).min(disk_size);
    let _ = total.send(changed); // The receiver is gone only if the writer failed first.
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
