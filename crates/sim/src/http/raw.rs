//! `GET /export_raw_vdi` and `PUT /import_raw_vdi`: a disk as raw or VHD, with
//! `base=` a delta (differencing VHD, or raw with unchanged regions zero), and
//! imports into a VDI (`vdi=`) or a new one (`sr_id=`).

use super::{BodySender, Params, begin, export_headers, fail, maybe_redirect, stream_body, vdi_param};
use crate::error::{ApiError, ApiResult};
use crate::methods::{task, vdi};
use crate::state::SharedSim;
use crate::storage::BLOCK;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::io::{self, Read, Write};
use xenvault_vhd::{DEFAULT_BLOCK_SIZE, DynamicWriter, MAX_DISK_SIZE, ParentInfo, VhdStreamReader, WriterOptions};
use xenvault_xapi_wire::Value;

const VHD_BLOCK: u64 = DEFAULT_BLOCK_SIZE as u64;
/// Raw exports go out in pieces of this size.
const RAW_CHUNK: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Raw,
    Vhd,
}

fn format_of(q: &Params) -> Option<Format> {
    match q.get("format").map(|f| f.to_ascii_lowercase()).as_deref() {
        None | Some("raw") => Some(Format::Raw),
        Some("vhd") => Some(Format::Vhd),
        _ => None,
    }
}

/// What an export reads: the disk, an optional base to compare with, its size.
struct Source {
    disk: String,
    base: Option<String>,
    size: u64,
}

impl Source {
    /// Whether 64 KiB block `index` goes into the export.
    fn wanted(&self, sim: &SharedSim, index: u64) -> bool {
        let st = sim.lock();
        match &self.base {
            Some(base) => !st.storage.same_block(&self.disk, base, index),
            None => st.storage.is_allocated(&self.disk, index),
        }
    }

    fn read(&self, sim: &SharedSim, offset: u64, buf: &mut [u8]) -> ApiResult<()> {
        Ok(sim.lock().storage.read(&self.disk, offset, buf)?)
    }
}

pub async fn export(State(sim): State<SharedSim>, Query(q): Query<Params>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(redirect) = maybe_redirect(&sim, &q, &headers, &uri) {
        return redirect;
    }
    let task_ref = match begin(&sim, &q, "VDI.export_raw_vdi") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(format) = format_of(&q) else {
        let e = ApiError::internal(format!("Unknown format {}", q.get("format").cloned().unwrap_or_default()));
        task::complete(&sim, &task_ref, Err(e));
        return StatusCode::NOT_FOUND.into_response();
    };
    let prepared = (|| {
        let vdi_ref = vdi_param(&sim, &q, "vdi")?;
        let base_ref = match q.get("base") {
            Some(_) => Some(vdi_param(&sim, &q, "base")?),
            None => None,
        };
        let st = sim.lock();
        for v in std::iter::once(&vdi_ref).chain(base_ref.as_ref()) {
            if st.db.str_field("VDI", v, "type")? == "cbt_metadata" {
                return Err(ApiError::new("VDI_INCOMPATIBLE_TYPE", [v.as_str(), "cbt_metadata"]));
            }
        }
        let disk = vdi::disk_id(&st, &vdi_ref)?;
        let size = st.storage.size(&disk)?;
        if format == Format::Vhd && size > MAX_DISK_SIZE {
            return Err(ApiError::new("VDI_TOO_LARGE", [vdi_ref.clone(), MAX_DISK_SIZE.to_string()]));
        }
        let base = match &base_ref {
            Some(b) => Some((vdi::disk_id(&st, b)?, st.db.str_field("VDI", b, "SR")?)),
            None => None,
        };
        let uuid = st.db.str_field("VDI", &vdi_ref, "uuid")?;
        Ok((Source { disk, base: base.as_ref().map(|b| b.0.clone()), size }, base, uuid))
    })();
    let (source, base, uuid) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&sim, &task_ref, e),
    };
    let (content_type, ext) = match format {
        Format::Raw => ("application/octet-stream", "raw"),
        Format::Vhd => ("application/vhd", "vhd"),
    };
    let headers = export_headers(&task_ref, content_type, &format!("{uuid}.{ext}"));
    let sim2 = sim.clone();
    let task2 = task_ref.clone();
    let body = stream_body(&sim, task_ref, move |out| match format {
        Format::Raw => send_raw(&sim2, &task2, &source, out),
        Format::Vhd => send_vhd(&sim2, &task2, &source, base.as_ref().map(|(d, sr)| (d.as_str(), sr.as_str())), out),
    });
    (StatusCode::OK, headers, body).into_response()
}

fn send_raw(sim: &SharedSim, task_ref: &str, src: &Source, out: &mut BodySender) -> ApiResult<()> {
    let mut offset = 0;
    while offset < src.size {
        let n = (src.size - offset).min(RAW_CHUNK);
        let mut buf = vec![0u8; n as usize];
        src.read(sim, offset, &mut buf)?;
        if src.base.is_some() {
            // Unchanged regions go out as zeros: only the delta carries data.
            for (i, piece) in buf.chunks_mut(BLOCK as usize).enumerate() {
                if !src.wanted(sim, offset / BLOCK + i as u64) {
                    piece.fill(0);
                }
            }
        }
        if !out.send(buf) || task::is_cancelling(sim, task_ref) {
            return Err(ApiError::new("TASK_CANCELLED", [task_ref]));
        }
        offset += n;
        task::set_progress(sim, task_ref, offset as f64 / src.size as f64);
    }
    Ok(())
}

/// Buffers writes into 1 MiB body chunks.
pub struct ChunkWriter<'a> {
    pub out: &'a mut BodySender,
    pub buf: Vec<u8>,
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= RAW_CHUNK as usize {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.out.send(std::mem::take(&mut self.buf)) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "transfer cut or client gone"))
        }
    }
}

fn vhd_error(e: xenvault_vhd::Error) -> ApiError {
    ApiError::internal(format!("VHD: {e}"))
}

/// A dynamic VHD of the allocated 2 MiB blocks, or with a base a differencing VHD
/// of the blocks written since the base.
fn send_vhd(
    sim: &SharedSim,
    task_ref: &str,
    src: &Source,
    base: Option<(&str, &str)>,
    out: &mut BodySender,
) -> ApiResult<()> {
    let per_vhd_block = VHD_BLOCK / BLOCK;
    let blocks = src.size.div_ceil(VHD_BLOCK);
    let present: Vec<u32> = (0..blocks)
        .filter(|b| (b * per_vhd_block..(b + 1) * per_vhd_block).any(|i| i * BLOCK < src.size && src.wanted(sim, i)))
        .filter_map(|b| u32::try_from(b).ok())
        .collect();
    let sink = ChunkWriter { out, buf: Vec::with_capacity(RAW_CHUNK as usize + VHD_BLOCK as usize) };
    let options = WriterOptions { unique_id: uuid::Uuid::new_v4(), timestamp: 0 };
    let mut writer = match base {
        Some((base_disk, base_sr)) => {
            // The base's VHD identity: its uuid, at its path on a file SR.
            let parent = ParentInfo {
                unique_id: uuid::Uuid::parse_str(base_disk).unwrap_or_default(),
                timestamp: 0,
                path: format!("/var/run/sr-mount/{}/{base_disk}.vhd", sr_uuid(sim, base_sr)),
            };
            DynamicWriter::differencing(sink, src.size, present.iter().copied(), options, &parent)
        }
        None => DynamicWriter::dynamic(sink, src.size, present.iter().copied(), options),
    }
    .map_err(vhd_error)?;
    let mut block = vec![0u8; VHD_BLOCK as usize];
    for (done, &index) in present.iter().enumerate() {
        let offset = u64::from(index) * VHD_BLOCK;
        // The last block of a disk whose size is not a multiple of 2 MiB holds only the
        // rest of the disk; the writer pads it with zeros to a whole block, as xapi does.
        let n = (src.size - offset).min(VHD_BLOCK) as usize;
        src.read(sim, offset, &mut block[..n])?;
        writer.write_block(index, &block[..n]).map_err(vhd_error)?;
        if task::is_cancelling(sim, task_ref) {
            return Err(ApiError::new("TASK_CANCELLED", [task_ref]));
        }
        task::set_progress(sim, task_ref, (done + 1) as f64 / present.len() as f64);
    }
    let mut sink = writer.finish().map_err(vhd_error)?;
    sink.flush().map_err(ApiError::from)
}

fn sr_uuid(sim: &SharedSim, sr: &str) -> String {
    sim.lock().db.str_field("SR", sr, "uuid").unwrap_or_default()
}

/// A blocking reader over the request body (imports parse on a blocking thread).
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl BodyReader {
    /// Pumps `body` into a channel; `cut` ends it early (fault injection).
    pub fn new(body: Body, cut: Option<u64>) -> Self {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            let mut seen = 0u64;
            while let Some(frame) = stream.next().await {
                let item = frame.map_err(|e| e.to_string());
                if let (Ok(data), Some(limit)) = (&item, cut) {
                    if seen + data.len() as u64 > limit {
                        let keep = data.slice(..(limit - seen) as usize);
                        let _ = tx.send(Ok(keep)).await;
                        let _ = tx.send(Err("transfer cut (fault injection)".to_owned())).await;
                        return;
                    }
                    seen += data.len() as u64;
                }
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        BodyReader { rx, current: bytes::Bytes::new() }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// The Content-Length an import must carry (xapi has no chunked uploads).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get("content-length")?.to_str().ok()?.parse().ok()
}

pub async fn import(
    State(sim): State<SharedSim>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    if let Some(redirect) = maybe_redirect(&sim, &q, &headers, &uri) {
        return redirect;
    }
    let task_ref = match begin(&sim, &q, "VDI.import_raw_vdi") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(format) = format_of(&q) else {
        task::complete(&sim, &task_ref, Err(ApiError::internal("Unknown format")));
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(length) = content_length(&headers) else {
        return fail(&sim, &task_ref, ApiError::internal("import_raw_vdi needs a Content-Length"));
    };
    let target = match q.get("vdi") {
        Some(_) => vdi_param(&sim, &q, "vdi").map(Target::Existing),
        None => match q.get("sr_id") {
            Some(sr) if sim.lock().db.exists("SR", sr) => Ok(Target::NewOn(sr.clone())),
            Some(sr) => Err(ApiError::handle_invalid("SR", sr)),
            None => Err(ApiError::internal("Missing vdi or sr_id query parameter")),
        },
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return fail(&sim, &task_ref, e),
    };
    let cut = sim.lock().faults.cut_http_after;
    let mut reader = BodyReader::new(body, cut).take(length);
    let (sim2, task2) = (sim.clone(), task_ref.clone());
    let outcome = tokio::task::spawn_blocking(move || match format {
        Format::Raw => receive_raw(&sim2, &task2, target, length, &mut reader),
        Format::Vhd => receive_vhd(&sim2, target, &mut reader),
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::internal(e)));
    match outcome {
        Ok(vdi_ref) => {
            task::complete(&sim, &task_ref, Ok(Value::from(vdi_ref)));
            let mut h = HeaderMap::new();
            if let Ok(v) = task_ref.parse() {
                h.insert("task-id", v);
            }
            (StatusCode::OK, h).into_response()
        }
        Err(e) => fail(&sim, &task_ref, e),
    }
}

pub enum Target {
    Existing(String),
    NewOn(String),
}

/// The VDI an import writes to, creating it on the SR when asked.
fn target_vdi(sim: &SharedSim, target: Target, size: u64) -> ApiResult<String> {
    match target {
        Target::Existing(v) => {
            let st = sim.lock();
            let have = st.storage.size(&vdi::disk_id(&st, &v)?)?;
            if have < size {
                return Err(ApiError::new("VDI_TOO_SMALL", [v.clone(), size.to_string()]));
            }
            Ok(v)
        }
        Target::NewOn(sr) => sim.with(|st| vdi::create(st, "import", &sr, size, "user")),
    }
}

fn receive_raw(
    sim: &SharedSim,
    task_ref: &str,
    target: Target,
    length: u64,
    body: &mut impl Read,
) -> ApiResult<String> {
    let vdi_ref = target_vdi(sim, target, length)?;
    let mut buf = vec![0u8; RAW_CHUNK as usize];
    let mut offset = 0u64;
    while offset < length {
        let n = (length - offset).min(RAW_CHUNK) as usize;
        body.read_exact(&mut buf[..n]).map_err(|e| ApiError::internal(format!("import body: {e}")))?;
        sim.with(|st| vdi::write_guest(st, &vdi_ref, offset, &buf[..n]))?;
        offset += n as u64;
        task::set_progress(sim, task_ref, offset as f64 / length.max(1) as f64);
    }
    sim.with(|st| vdi::finish_writes(st, &vdi_ref))?;
    Ok(vdi_ref)
}

/// A VHD import writes only the sectors the VHD holds, so a delta applies on top.
fn receive_vhd(sim: &SharedSim, target: Target, body: &mut impl Read) -> ApiResult<String> {
    let mut reader = VhdStreamReader::new(body).map_err(vhd_error)?;
    let vdi_ref = target_vdi(sim, target, reader.disk_size())?;
    while let Some(extent) = reader.next_extent().map_err(vhd_error)? {
        let (offset, data) = (extent.offset, extent.data);
        sim.with(|st| vdi::write_guest(st, &vdi_ref, offset, data))?;
    }
    sim.with(|st| vdi::finish_writes(st, &vdi_ref))?;
    Ok(vdi_ref)
}
