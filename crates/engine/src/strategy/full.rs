//! Full read over HTTP: `/export_raw_vdi?format=raw`, one sequential stream. The
//! repository drops chunks it already has, so a full read still stores only what is new.

use futures::TryStreamExt;

use crate::error::Error;
use crate::store::DiskSink;
use xenvault_pool::host::ByteStream;
use xenvault_pool::records::Vdi;
use xenvault_types::progress::Task;

/// Streams the whole disk into `sink`; returns the bytes read.
pub async fn read_raw(mut body: ByteStream, snapshot: &Vdi, sink: &DiskSink, task: &Task) -> Result<u64, Error> {
    let mut offset = 0u64;
    while let Some(data) = body.try_next().await? {
        let len = data.len() as u64;
        if offset.saturating_add(len) > snapshot.virtual_size {
            return Err(Error::Protocol(format!(
                "raw export of {} is longer than the disk ({} bytes)",
                snapshot.uuid, snapshot.virtual_size
            )));
        }
        sink.write(offset, data).await?;
        offset += len;
        task.advance(len);
    }
    if offset != snapshot.virtual_size {
        return Err(Error::Cut(format!(
            "raw export of {} ended after {offset} of {} bytes",
            snapshot.uuid, snapshot.virtual_size
        )));
    }
    Ok(offset)
}
