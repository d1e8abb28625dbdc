//! XVA full backups: the snapshot exported by xapi as an XVA, its disks stored like any
//! other restore point and its `ova.xml` kept in the manifest, so the restore point can
//! be written out again as an XVA that xapi imports.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Instant;
use xenvault_xapi_wire::Value;

use crate::body::{BlockingBody, blocking_body};
use crate::error::Error;
use crate::store::{DiskSink, Point};
use xenvault_pool::host::ByteStream;
use xenvault_types::metadata::{VmMetadata, XvaArchive};
use xenvault_types::progress::Task;

const STAGE_DEPTH: usize = 8;

/// One disk as stored from the archive.
pub struct StoredDisk {
    pub name: String,
    pub snapshot_vdi_uuid: String,
    pub size: u64,
    pub bytes_read: u64,
    pub record: xenvault_repo::DiskRecord,
    pub seconds: f64,
}

enum Item {
    Header { ova_xml: String, disks: Vec<DiskHeader> },
    Data { disk: String, offset: u64, data: Bytes },
}

struct DiskHeader {
    reference: String,
    size: u64,
    /// VDI uuid and VBD userdevice from ova.xml.
    uuid: String,
    position: String,
}

/// Reads the XVA in `body` into `point`: one disk writer per VDI, named by its device
/// position. `origin` maps a snapshot VDI uuid to the live VDI's uuid.
pub async fn store(
    body: ByteStream,
    point: &Point,
    origin: &BTreeMap<String, String>,
    task: &Task,
) -> Result<(Vec<StoredDisk>, XvaArchive), Error> {
    let (input, pump) = blocking_body(body);
    let (item_tx, mut item_rx) = tokio::sync::mpsc::channel::<Item>(STAGE_DEPTH);
    let parser = tokio::task::spawn_blocking(move || parse(input, item_tx));
    let apply = async {
        let mut metadata = None;
        let mut stored = Vec::new();
        let mut current: Option<(DiskHeader, DiskSink, Instant, u64)> = None;
        let mut headers = Vec::new();
        // xapi leaves zero chunks out: the bar counts them as passed, so it ends at the
        // disks' size.
        let (mut disk_bytes, mut passed, mut covered) = (0u64, 0u64, 0u64);
        while let Some(item) = item_rx.recv().await {
            match item {
                Item::Header { ova_xml, disks } => {
                    disk_bytes = disks.iter().map(|d| d.size).sum();
                    task.set_total(disk_bytes);
                    let names = disks.iter().map(|d| (d.reference.clone(), d.position.clone())).collect();
                    metadata = Some(XvaArchive { ova_xml, disks: names });
                    headers = disks;
                    headers.reverse();
                }
                Item::Data { disk, offset, data } => {
                    if current.as_ref().is_none_or(|(h, ..)| h.reference != disk) {
                        if let Some(done) = current.take() {
                            stored.push(finish(done).await?);
                        }
                        // Disks arrive in archive order; skip the ones with no data at all.
                        while let Some(header) = headers.pop() {
                            if header.reference == disk {
                                let vdi = origin.get(&header.uuid).cloned().unwrap_or_default();
                                let sink = point.disk_sink(&header.position, &vdi, header.size, None).await?;
                                current = Some((header, sink, Instant::now(), 0));
                                covered = 0;
                                break;
                            }
                            stored.push(empty_disk(point, header, origin).await?);
                        }
                    }
                    let (_, sink, _, read) = current
                        .as_mut()
                        .ok_or_else(|| Error::Xva(format!("data for {disk}, which ova.xml does not list")))?;
                    *read += data.len() as u64;
                    let end = offset + data.len() as u64;
                    sink.write(offset, data).await?;
                    let step = end.saturating_sub(covered);
                    task.advance(step);
                    passed += step;
                    covered = covered.max(end);
                }
            }
        }
        if let Some(done) = current.take() {
            stored.push(finish(done).await?);
        }
        while let Some(header) = headers.pop() {
            stored.push(empty_disk(point, header, origin).await?);
        }
        task.advance(disk_bytes.saturating_sub(passed));
        let metadata = metadata.ok_or_else(|| Error::Xva("the export held no ova.xml".into()))?;
        Ok::<_, Error>((stored, metadata))
    };
    let (read, applied) = futures::join!(pump, apply);
    parser.await.map_err(|e| Error::Xva(format!("XVA parser task: {e}")))??;
    read?;
    applied
}

async fn finish((header, sink, started, read): (DiskHeader, DiskSink, Instant, u64)) -> Result<StoredDisk, Error> {
    Ok(StoredDisk {
        name: header.position,
        snapshot_vdi_uuid: header.uuid,
        size: header.size,
        bytes_read: read,
        record: sink.finish().await?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A disk whose every chunk was zero except none were sent (never with xapi, which
/// always sends the first and last chunk): stored as zeros all the same.
async fn empty_disk(point: &Point, header: DiskHeader, origin: &BTreeMap<String, String>) -> Result<StoredDisk, Error> {
    let vdi = origin.get(&header.uuid).cloned().unwrap_or_default();
    let sink = point.disk_sink(&header.position, &vdi, header.size, None).await?;
    finish((header, sink, Instant::now(), 0)).await
}

fn parse(input: BlockingBody, out: tokio::sync::mpsc::Sender<Item>) -> Result<(), Error> {
    let mut reader = xenvault_xva::XvaReader::new(input).map_err(xva_error)?;
    let ova_xml = xenvault_xva::ova_xml(reader.version(), reader.objects());
    let objects = reader.objects();
    let mut disks = Vec::new();
    for info in reader.disks() {
        let size = info.size.ok_or_else(|| Error::Xva(format!("{} has no virtual_size", info.reference)))?;
        let vdi = objects.iter().find(|o| o.class == "VDI" && o.id == info.reference);
        let uuid = vdi.and_then(|o| o.snapshot.get("uuid")).and_then(Value::as_str).unwrap_or_default().to_owned();
        let position = objects
            .iter()
            .filter(|o| o.class == "VBD")
            .find(|o| o.snapshot.get("VDI").and_then(Value::as_str) == Some(info.reference.as_str()))
            .and_then(|o| o.snapshot.get("userdevice"))
            .and_then(Value::as_str)
            .unwrap_or(info.reference.as_str())
            .to_owned();
        disks.push(DiskHeader { reference: info.reference, size, uuid, position });
    }
    if out.blocking_send(Item::Header { ova_xml, disks }).is_err() {
        return Ok(());
    }
    while let Some(chunk) = reader.next_chunk().map_err(xva_error)? {
        let item =
            Item::Data { disk: chunk.disk.to_owned(), offset: chunk.offset, data: Bytes::copy_from_slice(chunk.data) };
        if out.blocking_send(item).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn xva_error(e: xenvault_xva::Error) -> Error {
    match e {
        xenvault_xva::Error::Io(io) => Error::Cut(format!("XVA export: {io}")),
        other => Error::Xva(other.to_string()),
    }
}

/// Writes a restore point made by an XVA backup as an XVA again (into `out`, e.g. a
/// file or an HTTP import body).
pub async fn export(
    repo: &xenvault_repo::Repository,
    manifest: &xenvault_repo::Manifest,
    out: impl std::io::Write + Send + 'static,
) -> Result<(), Error> {
    let metadata = VmMetadata::from_value(&manifest.metadata)
        .map_err(|e| Error::Xva(format!("restore point {}: {e}", manifest.id)))?
        .and_then(|m| m.xva)
        .ok_or_else(|| Error::Xva(format!("restore point {} was not made from an XVA", manifest.id)))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<(String, u64)>>(1);
    let (data_tx, data_rx) = std::sync::mpsc::sync_channel::<Bytes>(STAGE_DEPTH);
    let ova_xml = metadata.ova_xml.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let mtime = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let mut xva = xenvault_xva::XvaWriter::new(out, &ova_xml, mtime, Default::default()).map_err(xva_error)?;
        while let Some(Some((reference, size))) = rx.blocking_recv() {
            xva.begin_disk(&reference, size).map_err(xva_error)?;
            let mut written = 0;
            while written < size {
                let data = data_rx.recv().map_err(|_| Error::Xva("disk data ended early".into()))?;
                written += data.len() as u64;
                xva.write(&data).map_err(xva_error)?;
            }
        }
        xva.finish().map_err(xva_error)?;
        Ok(())
    });
    let feed = async {
        // BTreeMap order is the archive's lexicographic Ref:N order.
        for (reference, name) in &metadata.disks {
            let record =
                manifest.disk(Some(name)).map_err(|e| Error::Xva(format!("no stored disk for {reference}: {e}")))?;
            let reader = xenvault_repo::DiskReader::new(repo, record).await?;
            if tx.send(Some((reference.clone(), record.size))).await.is_err() {
                break;
            }
            let mut offset = 0;
            while offset < record.size {
                let len = (record.size - offset).min(xenvault_xva::CHUNK_SIZE) as usize;
                let mut buf = vec![0u8; len];
                reader.read_at(offset, &mut buf).await?;
                offset += len as u64;
                let sender = data_tx.clone();
                let sent = tokio::task::spawn_blocking(move || sender.send(Bytes::from(buf))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Ok(());
                }
            }
        }
        let _ = tx.send(None).await;
        Ok::<(), Error>(())
    };
    let fed = feed.await;
    // Whatever happened, let the writer thread see the end.
    drop(tx);
    drop(data_tx);
    writer.await.map_err(|e| Error::Xva(format!("XVA writer task: {e}")))??;
    fed
}
