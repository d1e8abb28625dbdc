//! NBD client: fixed newstyle handshake (STARTTLS, GO with fallback to EXPORT_NAME, structured
//! replies, `base:allocation`), then pipelined requests matched to replies by handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::try_join_all;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::proto::{self, ChunkHeader, Cursor, OptionHeader, OptionReplyHeader, Request};
use crate::stream::{BoxStream, read_array, read_exact, read_payload};
use crate::tls::TlsOptions;

/// Option replies carry names and short messages; anything bigger is hostile.
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Non-data structured chunks (errors, block status) are bounded the same way.
const MAX_METADATA_CHUNK: u32 = 1 << 20;

/// Where and how to connect. `new` gives the defaults: try GO, structured replies and block status.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub export_name: String,
    pub tls: Option<TlsOptions>,
    /// Try NBD_OPT_GO first (falls back to EXPORT_NAME on NBD_REP_ERR_UNSUP, as xapi answers).
    pub try_go: bool,
    pub structured_replies: bool,
    /// Ask for the `base:allocation` meta context (needs structured replies).
    pub block_status: bool,
    /// Limit for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// A reply slower than this declares the connection dead (so a multi-connection reader
    /// re-opens it instead of waiting forever on a stuck link).
    pub request_timeout: Option<Duration>,
}

impl ConnectOptions {
    pub fn new(host: impl Into<String>, port: u16, export_name: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            export_name: export_name.into(),
            tls: None,
            try_go: true,
            structured_replies: true,
            block_status: true,
            connect_timeout: Duration::from_secs(30),
            request_timeout: Some(Duration::from_secs(120)),
        }
    }

    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Block size constraints from NBD_INFO_BLOCK_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// What the handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// Transmission flags (`proto::TFLAG_*`).
    pub flags: u16,
    pub block_size: Option<BlockSize>,
    /// Largest request payload this client sends: 32 MiB unless the server said otherwise.
    pub max_request: u32,
    pub structured_replies: bool,
    /// Context id of `base:allocation` when the server agreed to it.
    pub base_allocation: Option<u32>,
    /// False when the server refused GO and EXPORT_NAME was used (xapi).
    pub used_go: bool,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & proto::TFLAG_READ_ONLY != 0
    }
    pub fn can_multi_conn(&self) -> bool {
        self.flags & proto::TFLAG_CAN_MULTI_CONN != 0
    }
}

/// One run of blocks with the same `base:allocation` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// `proto::STATE_HOLE` / `proto::STATE_ZERO` bits.
    pub flags: u32,
}

impl Extent {
    pub fn is_hole(&self) -> bool {
        self.flags & proto::STATE_HOLE != 0
    }
    pub fn is_zero(&self) -> bool {
        self.flags & proto::STATE_ZERO != 0
    }
}

/// A connected export. Methods take `&self` and may be called concurrently: requests are pipelined
/// on the one connection.
pub struct Client {
    info: ExportInfo,
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Bytes>,
    next_handle: AtomicU64,
    request_timeout: Option<Duration>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects over TCP, performs the handshake and starts the reply reader.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client> {
        let setup = async {
            let tcp = TcpStream::connect((opts.host.as_str(), opts.port)).await?;
            tcp.set_nodelay(true)?;
            handshake(Box::new(tcp), opts).await
        };
        let (stream, info) = tokio::time::timeout(opts.connect_timeout, setup)
            .await
            .map_err(|_| timed_out("NBD connect timed out"))??;
        Ok(Client::start(stream, info, opts.request_timeout))
    }

    /// Runs the transmission phase over an already negotiated stream.
    pub(crate) fn start<S: AsyncRead + AsyncWrite + Send + 'static>(
        stream: S,
        info: ExportInfo,
        request_timeout: Option<Duration>,
    ) -> Client {
        let (read_half, write_half) = tokio::io::split(stream);
        let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()) });
        let (outgoing, rx) = mpsc::channel(64);
        let reader = tokio::spawn(read_replies(read_half, shared.clone(), info.clone()));
        let writer = tokio::spawn(write_requests(write_half, rx, shared.clone()));
        Client { info, shared, outgoing, next_handle: AtomicU64::new(1), request_timeout, reader, writer }
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The error that ended the connection, if it has ended.
    pub fn failure(&self) -> Option<Error> {
        self.shared.lock().dead.clone()
    }

    /// Reads `len` bytes at `offset`; requests above the maximum size are split and pipelined.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        self.check_range(offset, len.into())?;
        let max = self.info.max_request;
        if len <= max {
            return self.read_one(offset, len).await;
        }
        let parts = (0..len).step_by(max as usize).map(|at| self.read_one(offset + u64::from(at), max.min(len - at)));
        let mut out = BytesMut::with_capacity(len as usize);
        for part in try_join_all(parts).await? {
            out.extend_from_slice(&part);
        }
        Ok(out.freeze())
    }

    async fn read_one(&self, offset: u64, len: u32) -> Result<Bytes> {
        match self.request(proto::CMD_READ, 0, offset, len, None, Kind::Read { offset, len }).await? {
            Reply::Data(data) => Ok(data),
            _ => Err(Error::Malformed("reply kind for a read")),
        }
    }

    /// `base:allocation` extents covering (at least the start of) the range.
    pub async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>> {
        if self.info.base_allocation.is_none() {
            return Err(Error::Unsupported("block status (no base:allocation context)"));
        }
        self.check_range(offset, len.into())?;
        match self.request(proto::CMD_BLOCK_STATUS, 0, offset, len, None, Kind::BlockStatus { offset }).await? {
            Reply::Extents(e) => Ok(e),
            _ => Err(Error::Malformed("reply kind for block status")),
        }
    }

    /// Writes `data` at `offset` (the server decides whether it allows it).
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let parts = data.chunks(self.info.max_request as usize).enumerate().map(|(i, chunk)| {
            let at = offset + (i as u64) * u64::from(self.info.max_request);
            self.request(proto::CMD_WRITE, 0, at, chunk.len() as u32, Some(chunk), Kind::Plain)
        });
        try_join_all(parts).await.map(drop)
    }

    pub async fn flush(&self) -> Result<()> {
        self.request(proto::CMD_FLUSH, 0, 0, 0, None, Kind::Plain).await.map(drop)
    }

    /// Sends NBD_CMD_DISC (after the requests already queued) and waits for the stream to close.
    pub async fn close(mut self) -> Result<()> {
        let disc = Request::new(proto::CMD_DISC, 0, 0, 0, 0).encode();
        let sent = self.outgoing.send(Bytes::copy_from_slice(&disc)).await;
        // Swapping in a dead sender drops ours, so the writer shuts the stream down after DISC.
        self.outgoing = mpsc::channel(1).0;
        let _ = (&mut self.writer).await;
        match (sent, self.failure()) {
            (Err(_), Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size: self.info.size }),
        }
    }

    async fn request(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
        kind: Kind,
    ) -> Result<Reply> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.lock();
            if let Some(e) = &pending.dead {
                return Err(e.clone());
            }
            pending.waiting.insert(handle, Waiter { kind, tx });
        }
        let header = Request::new(command, flags, handle, offset, len).encode();
        let mut msg = BytesMut::with_capacity(header.len() + payload.map_or(0, <[u8]>::len));
        msg.put_slice(&header);
        if let Some(p) = payload {
            msg.put_slice(p);
        }
        // One channel message per request keeps a cancelled caller from leaving half a request.
        if self.outgoing.send(msg.freeze()).await.is_err() {
            self.shared.lock().waiting.remove(&handle);
            return Err(self.failure().unwrap_or(Error::Closed("before the request was sent")));
        }
        let reply = match self.request_timeout {
            None => rx.await,
            Some(limit) => match tokio::time::timeout(limit, rx).await {
                Ok(reply) => reply,
                Err(_) => {
                    // The late reply would match no request: the link is of no further use.
                    let e = timed_out("NBD reply timed out");
                    self.shared.fail_all(e.clone(), []);
                    return Err(e);
                }
            },
        };
        reply.unwrap_or_else(|_| Err(self.failure().unwrap_or(Error::Closed("before the reply arrived"))))
    }
}

fn timed_out(what: &str) -> Error {
    Error::Io(Arc::new(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
}

#[derive(Debug)]
enum Kind {
    Read { offset: u64, len: u32 },
    BlockStatus { offset: u64 },
    Plain,
}

enum Reply {
    Data(Bytes),
    Extents(Vec<Extent>),
    Done,
}

struct Waiter {
    kind: Kind,
    tx: oneshot::Sender<Result<Reply>>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Waiter>,
    dead: Option<Error>,
}

struct Shared {
    pending: Mutex<Pending>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned map is still consistent: each operation is a single insert/remove.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead and fails every waiting request with the cause.
    fn fail_all(&self, error: Error, in_progress: impl IntoIterator<Item = Waiter>) {
        let waiting: Vec<Waiter> = {
            let mut pending = self.lock();
            pending.dead.get_or_insert(error.clone());
            pending.waiting.drain().map(|(_, w)| w).collect()
        };
        for w in waiting.into_iter().chain(in_progress) {
            let _ = w.tx.send(Err(error.clone()));
        }
    }
}

async fn write_requests<W: AsyncWrite>(mut w: WriteHalf<W>, mut rx: mpsc::Receiver<Bytes>, shared: Arc<Shared>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = w.write_all(&msg).await {
            shared.fail_all(e.into(), []);
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// A structured reply being assembled from chunks.
struct Assembly {
    waiter: Waiter,
    data: BytesMut,
    covered: u64,
    extents: Vec<Extent>,
    error: Option<Error>,
}

async fn read_replies<R: AsyncRead>(mut r: ReadHalf<R>, shared: Arc<Shared>, info: ExportInfo) {
    let mut assembling: HashMap<u64, Assembly> = HashMap::new();
    let error = loop {
        if let Err(e) = read_reply(&mut r, &shared, &info, &mut assembling).await {
            break e;
        }
    };
    shared.fail_all(error, assembling.into_values().map(|a| a.waiter));
}

fn take_waiter(shared: &Shared, handle: u64) -> Result<Waiter> {
    shared.lock().waiting.remove(&handle).ok_or(Error::UnknownHandle(handle))
}

async fn read_reply<R: AsyncRead>(
    r: &mut ReadHalf<R>,
    shared: &Shared,
    info: &ExportInfo,
    assembling: &mut HashMap<u64, Assembly>,
) -> Result<()> {
    let magic = u32::from_be_bytes(read_array(r, "between replies").await?);
    match magic {
        proto::SIMPLE_REPLY_MAGIC => {
            let rest: [u8; 12] = read_array(r, "in a reply header").await?;
            let mut c = Cursor::new(&rest);
            let errno = c.u32().unwrap_or_default();
            let handle = c.u64().unwrap_or_default();
            if assembling.contains_key(&handle) {
                return Err(Error::Malformed("simple reply to a request answered in chunks"));
            }
            let waiter = take_waiter(shared, handle)?;
            let reply = if errno != 0 {
                Err(Error::Server { errno, message: String::new() })
            } else {
                match waiter.kind {
                    Kind::Read { len, .. } => {
                        if info.structured_replies {
                            return Err(Error::Malformed(
                                "simple reply to a read after structured replies were agreed",
                            ));
                        }
                        let mut data = BytesMut::zeroed(len as usize);
                        read_exact(r, &mut data, "in read data").await?;
                        Ok(Reply::Data(data.freeze()))
                    }
                    Kind::BlockStatus { .. } => Err(Error::Malformed("simple reply to block status")),
                    Kind::Plain => Ok(Reply::Done),
                }
            };
            let _ = waiter.tx.send(reply);
            Ok(())
        }
        proto::STRUCTURED_REPLY_MAGIC if info.structured_replies => {
            let chunk = ChunkHeader::decode_after_magic(&read_array(r, "in a chunk header").await?);
            let mut asm = match assembling.remove(&chunk.handle) {
                Some(a) => a,
                None => {
                    let waiter = take_waiter(shared, chunk.handle)?;
                    let data = match waiter.kind {
                        // Holes are never sent as bytes, so start from zeros.
                        Kind::Read { len, .. } => BytesMut::zeroed(len as usize),
                        _ => BytesMut::new(),
                    };
                    Assembly { waiter, data, covered: 0, extents: Vec::new(), error: None }
                }
            };
            read_chunk(r, &chunk, &mut asm, info).await?;
            if chunk.flags & proto::REPLY_FLAG_DONE == 0 {
                assembling.insert(chunk.handle, asm);
                return Ok(());
            }
            let reply = match (asm.error, asm.waiter.kind) {
                (Some(e), _) => Err(e),
                (None, Kind::Read { len, .. }) if asm.covered != u64::from(len) => {
                    Err(Error::Malformed("structured read reply that does not cover the request"))
                }
                (None, Kind::Read { .. }) => Ok(Reply::Data(asm.data.freeze())),
                (None, Kind::BlockStatus { .. }) if asm.extents.is_empty() => {
                    Err(Error::Malformed("block status reply without extents"))
                }
                (None, Kind::BlockStatus { .. }) => Ok(Reply::Extents(asm.extents)),
                (None, Kind::Plain) => Ok(Reply::Done),
            };
            let _ = asm.waiter.tx.send(reply);
            Ok(())
        }
        found => {
            Err(Error::BadMagic { what: "reply", expected: proto::SIMPLE_REPLY_MAGIC.into(), found: found.into() })
        }
    }
}

async fn read_chunk<R: AsyncRead>(
    r: &mut ReadHalf<R>,
    chunk: &ChunkHeader,
    asm: &mut Assembly,
    info: &ExportInfo,
) -> Result<()> {
    match (chunk.kind, &asm.waiter.kind) {
        (proto::REPLY_TYPE_OFFSET_DATA, Kind::Read { offset, len }) => {
            let data_len =
                chunk.len.checked_sub(8).ok_or(Error::Malformed("OFFSET_DATA chunk shorter than its offset"))?;
            let at: [u8; 8] = read_array(r, "in an OFFSET_DATA chunk").await?;
            let start = slot_in_request(u64::from_be_bytes(at), data_len, *offset, *len)?;
            read_exact(r, &mut asm.data[start..start + data_len as usize], "in OFFSET_DATA payload").await?;
            asm.covered += u64::from(data_len);
        }
        (proto::REPLY_TYPE_OFFSET_HOLE, Kind::Read { offset, len }) => {
            if chunk.len != 12 {
                return Err(Error::Malformed("OFFSET_HOLE chunk length"));
            }
            let body: [u8; 12] = read_array(r, "in an OFFSET_HOLE chunk").await?;
            let mut c = Cursor::new(&body);
            let (at, size) = (c.u64().unwrap_or_default(), c.u32().unwrap_or_default());
            slot_in_request(at, size, *offset, *len)?;
            asm.covered += u64::from(size);
        }
        (proto::REPLY_TYPE_BLOCK_STATUS, Kind::BlockStatus { offset }) => {
            let body = read_payload(r, chunk.len, MAX_METADATA_CHUNK, "BLOCK_STATUS chunk").await?;
            if body.len() < 4 || (body.len() - 4) % 8 != 0 {
                return Err(Error::Malformed("BLOCK_STATUS chunk length"));
            }
            let mut c = Cursor::new(&body);
            let context = c.u32().unwrap_or_default();
            if Some(context) == info.base_allocation {
                let mut at = offset + asm.extents.iter().map(|e| e.len).sum::<u64>();
                while let (Some(len), Some(flags)) = (c.u32(), c.u32()) {
                    asm.extents.push(Extent { offset: at, len: len.into(), flags });
                    at += u64::from(len);
                }
            }
        }
        (proto::REPLY_TYPE_NONE, _) => {
            if chunk.len != 0 || chunk.flags & proto::REPLY_FLAG_DONE == 0 {
                return Err(Error::Malformed("NONE chunk with payload or without DONE"));
            }
        }
        (kind, _) if kind & 0x8000 != 0 => {
            let body = read_payload(r, chunk.len, MAX_METADATA_CHUNK, "error chunk").await?;
            let mut c = Cursor::new(&body);
            let errno = c.u32().ok_or(Error::Malformed("error chunk too short"))?;
            let msg_len = c.u16().ok_or(Error::Malformed("error chunk too short"))?;
            let message = c.bytes(msg_len.into()).ok_or(Error::Malformed("error chunk message length"))?;
            if errno == 0 {
                return Err(Error::Malformed("error chunk with errno 0"));
            }
            asm.error.get_or_insert(Error::Server { errno, message: String::from_utf8_lossy(message).into_owned() });
        }
        _ => {
            return Err(Error::Malformed("structured chunk type not valid for the request"));
        }
    }
    Ok(())
}

/// Position of a chunk inside the read buffer, after checking it lies within the request.
fn slot_in_request(at: u64, len: u32, req_offset: u64, req_len: u32) -> Result<usize> {
    let start = at.checked_sub(req_offset).ok_or(Error::Malformed("chunk before the requested range"))?;
    match start.checked_add(len.into()) {
        Some(end) if end <= u64::from(req_len) => Ok(start as usize),
        _ => Err(Error::Malformed("chunk beyond the requested range")),
    }
}

// ---- handshake ----

async fn send_option<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, option: u32, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| Error::Oversized {
        what: "option",
        len: payload.len() as u64,
        limit: u32::MAX.into(),
    })?;
    let mut msg = OptionHeader::encode(option, len).to_vec();
    msg.extend_from_slice(payload);
    w.write_all(&msg).await?;
    w.flush().await?;
    Ok(())
}

/// One option reply; a reply for another option or with a bad magic is an error.
async fn read_option_reply<R: AsyncRead + Unpin + ?Sized>(r: &mut R, option: u32) -> Result<(u32, Vec<u8>)> {
    let h = OptionReplyHeader::decode(&read_array(r, "in an option reply").await?);
    if h.magic != proto::OPTION_REPLY_MAGIC {
        return Err(Error::BadMagic { what: "option reply", expected: proto::OPTION_REPLY_MAGIC, found: h.magic });
    }
    if h.option != option {
        return Err(Error::UnexpectedOptionReply { option, for_option: h.option, reply: h.reply });
    }
    let payload = read_payload(r, h.len, MAX_OPTION_REPLY, "option reply").await?;
    Ok((h.reply, payload))
}

fn refused(option: u32, reply: u32, payload: &[u8]) -> Error {
    if reply == proto::REP_ERR_TLS_REQD {
        return Error::TlsRequired;
    }
    Error::OptionRefused { option, reply, message: String::from_utf8_lossy(payload).into_owned() }
}

fn unexpected(option: u32, reply: u32) -> Error {
    Error::UnexpectedOptionReply { option, for_option: option, reply }
}

/// Negotiates from the server's greeting up to the transmission phase.
pub(crate) async fn handshake(mut s: BoxStream, opts: &ConnectOptions) -> Result<(BoxStream, ExportInfo)> {
    let greeting: [u8; 18] = read_array(&mut s, "during the greeting").await?;
    let mut c = Cursor::new(&greeting);
    let (magic, second) = (c.u64().unwrap_or_default(), c.u64().unwrap_or_default());
    if magic != proto::NBD_MAGIC {
        return Err(Error::BadMagic { what: "greeting", expected: proto::NBD_MAGIC, found: magic });
    }
    match second {
        proto::IHAVEOPT => {}
        proto::OLDSTYLE_MAGIC => return Err(Error::Oldstyle),
        found => {
            return Err(Error::BadMagic { what: "greeting", expected: proto::IHAVEOPT, found });
        }
    }
    let server_flags = c.u16().unwrap_or_default();
    if server_flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(Error::NotFixedNewstyle);
    }
    let no_zeroes = server_flags & proto::FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(proto::FLAG_FIXED_NEWSTYLE | if no_zeroes { proto::FLAG_NO_ZEROES } else { 0 });
    s.write_all(&client_flags.to_be_bytes()).await?;

    if let Some(tls) = &opts.tls {
        s = start_tls(s, tls).await?;
    }

    let mut info = ExportInfo {
        size: 0,
        flags: 0,
        block_size: None,
        max_request: proto::DEFAULT_MAX_REQUEST,
        structured_replies: false,
        base_allocation: None,
        used_go: false,
    };
    if opts.structured_replies {
        send_option(&mut s, proto::OPT_STRUCTURED_REPLY, &[]).await?;
        match read_option_reply(&mut s, proto::OPT_STRUCTURED_REPLY).await? {
            (proto::REP_ACK, _) => info.structured_replies = true,
            (proto::REP_ERR_TLS_REQD, _) => return Err(Error::TlsRequired),
            (reply, _) if proto::is_error_reply(reply) => {}
            (reply, _) => return Err(unexpected(proto::OPT_STRUCTURED_REPLY, reply)),
        }
    }
    if info.structured_replies && opts.block_status {
        info.base_allocation = set_meta_context(&mut s, &opts.export_name).await?;
    }
    if opts.try_go && go(&mut s, &opts.export_name, &mut info).await? {
        info.used_go = true;
    } else {
        export_name(&mut s, &opts.export_name, no_zeroes, &mut info).await?;
    }
    if let Some(bs) = info.block_size {
        info.max_request = bs.maximum.clamp(1, proto::DEFAULT_MAX_REQUEST);
    }
    Ok((s, info))
}

async fn start_tls(mut s: BoxStream, tls: &TlsOptions) -> Result<BoxStream> {
    let config = tls.client_config()?;
    let name = tls.server_name()?;
    send_option(&mut s, proto::OPT_STARTTLS, &[]).await?;
    match read_option_reply(&mut s, proto::OPT_STARTTLS).await? {
        (proto::REP_ACK, _) => {}
        (reply, payload) if proto::is_error_reply(reply) => {
            return Err(refused(proto::OPT_STARTTLS, reply, &payload));
        }
        (reply, _) => return Err(unexpected(proto::OPT_STARTTLS, reply)),
    }
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, s)
        .await
        .map_err(|e| Error::Tls(format!("handshake with {}: {e}", tls.server_name)))?;
    Ok(Box::new(stream))
}

async fn set_meta_context(s: &mut BoxStream, export: &str) -> Result<Option<u32>> {
    let mut payload = proto::string32(export);
    payload.extend_from_slice(&1u32.to_be_bytes());
    payload.extend_from_slice(&proto::string32(proto::BASE_ALLOCATION));
    send_option(s, proto::OPT_SET_META_CONTEXT, &payload).await?;
    let mut context = None;
    loop {
        match read_option_reply(s, proto::OPT_SET_META_CONTEXT).await? {
            (proto::REP_META_CONTEXT, body) => {
                let mut c = Cursor::new(&body);
                let id = c.u32().ok_or(Error::Malformed("META_CONTEXT reply too short"))?;
                if c.rest() == proto::BASE_ALLOCATION.as_bytes() {
                    context = Some(id);
                }
            }
            (proto::REP_ACK, _) => return Ok(context),
            (proto::REP_ERR_TLS_REQD, _) => return Err(Error::TlsRequired),
            // Block status is optional: any refusal just means we go without.
            (reply, _) if proto::is_error_reply(reply) => return Ok(None),
            (reply, _) => return Err(unexpected(proto::OPT_SET_META_CONTEXT, reply)),
        }
    }
}

/// NBD_OPT_GO; Ok(false) when the server does not know GO (xapi) and EXPORT_NAME must be used.
async fn go(s: &mut BoxStream, export: &str, info: &mut ExportInfo) -> Result<bool> {
    let mut payload = proto::string32(export);
    payload.extend_from_slice(&1u16.to_be_bytes());
    payload.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, proto::OPT_GO, &payload).await?;
    let mut got_export = false;
    loop {
        match read_option_reply(s, proto::OPT_GO).await? {
            (proto::REP_INFO, body) => {
                let mut c = Cursor::new(&body);
                match c.u16().ok_or(Error::Malformed("INFO reply too short"))? {
                    proto::INFO_EXPORT => {
                        let (size, flags) = (c.u64(), c.u16());
                        let (Some(size), Some(flags)) = (size, flags) else {
                            return Err(Error::Malformed("NBD_INFO_EXPORT length"));
                        };
                        (info.size, info.flags, got_export) = (size, flags, true);
                    }
                    proto::INFO_BLOCK_SIZE => {
                        let (Some(minimum), Some(preferred), Some(maximum)) = (c.u32(), c.u32(), c.u32()) else {
                            return Err(Error::Malformed("NBD_INFO_BLOCK_SIZE length"));
                        };
                        info.block_size = Some(BlockSize { minimum, preferred, maximum });
                    }
                    _ => {} // Informational types we did not ask for are allowed.
                }
            }
            (proto::REP_ACK, _) if got_export => return Ok(true),
            (proto::REP_ACK, _) => {
                return Err(Error::Malformed("GO acknowledged without NBD_INFO_EXPORT"));
            }
            (proto::REP_ERR_UNSUP, _) => return Ok(false),
            (reply, payload) if proto::is_error_reply(reply) => {
                return Err(refused(proto::OPT_GO, reply, &payload));
            }
            (reply, _) => return Err(unexpected(proto::OPT_GO, reply)),
        }
    }
}

async fn export_name(s: &mut BoxStream, export: &str, no_zeroes: bool, info: &mut ExportInfo) -> Result<()> {
    send_option(s, proto::OPT_EXPORT_NAME, export.as_bytes()).await?;
    // The server closes the connection instead of replying when it refuses the name.
    let reply: [u8; 10] = read_array(s, "after EXPORT_NAME").await.map_err(|e| match e {
        Error::Closed(_) => Error::ExportRefused(export.to_owned()),
        e => e,
    })?;
    let mut c = Cursor::new(&reply);
    (info.size, info.flags) = (c.u64().unwrap_or_default(), c.u16().unwrap_or_default());
    if !no_zeroes {
        let _padding: [u8; proto::EXPORT_NAME_PADDING] = read_array(s, "in EXPORT_NAME padding").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_must_fit_the_request() {
        assert_eq!(slot_in_request(100, 10, 100, 20).ok(), Some(0));
        assert_eq!(slot_in_request(110, 10, 100, 20).ok(), Some(10));
        assert!(slot_in_request(99, 10, 100, 20).is_err());
        assert!(slot_in_request(111, 10, 100, 20).is_err());
        assert!(slot_in_request(u64::MAX, 10, 100, 20).is_err());
    }
}
