//! NBD server over any export source. `Behaviour::XapiCompat` reproduces xapi-nbd (ocaml-nbd's
//! server as xapi runs it) down to which options it refuses and when it drops the link;
//! `Behaviour::Modern` speaks GO/INFO, structured replies, `base:allocation` and optional writes.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::Extent;
use crate::error::{Error, Result};
use crate::proto::{self, ChunkHeader, Cursor, OptionHeader, OptionReplyHeader, Request};
use crate::stream::{BoxStream, read_array, read_payload};

/// A disk the server can serve. Only `size` and `read_at` are required.
pub trait Export: Send + Sync + 'static {
    fn size(&self) -> u64;
    /// Must return exactly `len` bytes; the server only asks for ranges inside `size`.
    fn read_at(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Bytes>>;
    /// Writable exports are offered read-write in `Modern` mode (xapi's are always read-only).
    fn writable(&self) -> bool {
        false
    }
    fn write_at(&self, _offset: u64, _data: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Err(io::Error::from(io::ErrorKind::PermissionDenied)) })
    }
    fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// `base:allocation` extents from `offset`; the default reports everything as allocated data.
    fn block_status(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Vec<Extent>>> {
        Box::pin(async move { Ok(vec![Extent { offset, len: len.into(), flags: 0 }]) })
    }
}

/// Why an export name was not accepted (unknown disk, bad session, ...). Logged; sent to the client
/// as the ERR_UNKNOWN message in `Modern` mode, while xapi just closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Maps the export name the client asked for to an export; called at every connect, so it is also
/// where the simulator checks `session_id`.
pub trait ExportResolver: Send + Sync + 'static {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Export>, Refusal>>;
    /// Names answered to NBD_OPT_LIST in `Modern` mode.
    fn list(&self) -> Vec<String> {
        Vec::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Exactly what xapi-nbd does (see xenapi-notes.md, NBD section).
    #[default]
    XapiCompat,
    /// Fixed newstyle with GO/INFO, structured replies, block status and writes.
    Modern,
}

#[derive(Clone)]
pub struct ServerConfig {
    pub behaviour: Behaviour,
    /// When set, TLS is required (STARTTLS before anything else), as on a network of purpose `nbd`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections beyond this are closed right after accept (xapi-nbd allows 16).
    pub max_connections: usize,
}

impl ServerConfig {
    pub fn xapi(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self { behaviour: Behaviour::XapiCompat, tls, max_connections: 16 }
    }
    pub fn modern(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self { behaviour: Behaviour::Modern, tls, max_connections: 64 }
    }
}

/// Largest option payload accepted (export names with a session id are ~90 bytes).
const MAX_OPTION: u32 = 64 << 10;
/// xapi-nbd only serves 512-byte sectors.
const XAPI_SECTOR: u64 = 512;
/// Reads are produced and sent in pieces of this size, so a huge request needs no huge buffer.
const READ_PIECE: u32 = 4 << 20;
/// Requests processed at once per connection in `Modern` mode.
const MODERN_IN_FLIGHT: usize = 16;
const BASE_ALLOCATION_ID: u32 = 1;

pub struct Server {
    config: Arc<ServerConfig>,
    resolver: Arc<dyn ExportResolver>,
    active: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
}

/// Serves `listener` until `shutdown` completes, then lets open connections finish their
/// current requests and waits for them.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    resolver: Arc<dyn ExportResolver>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Arc::new(Server::new(config, resolver)).serve(listener, shutdown).await
}

impl Server {
    pub fn new(config: ServerConfig, resolver: Arc<dyn ExportResolver>) -> Self {
        Self {
            config: Arc::new(config),
            resolver,
            active: Arc::new(AtomicUsize::new(0)),
            shutdown: watch::channel(false).0,
        }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(x) => x,
                        // Per-connection failures (e.g. aborted before accept) must not stop the server.
                        Err(e) => { tracing::debug!("nbd accept: {e}"); continue; }
                    };
                    let _ = tcp.set_nodelay(true);
                    let server = self.clone();
                    connections.spawn(async move {
                        tracing::debug!(%peer, "nbd connection");
                        server.handle(tcp).await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        self.shutdown();
        while connections.join_next().await.is_some() {}
        Ok(())
    }

    /// Asks every connection to close once its current requests are answered.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Serves one accepted connection to its end.
    pub async fn handle<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, stream: S) {
        let count = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        let _slot = SlotGuard(&self.active);
        if count > self.config.max_connections {
            tracing::info!("nbd: refusing connection, already {} open", self.config.max_connections);
            return;
        }
        let mut stop = self.shutdown.subscribe();
        if *stop.borrow_and_update() {
            return;
        }
        let conn = Connection { config: &self.config, resolver: self.resolver.as_ref() };
        let result = tokio::select! {
            r = conn.handshake(Box::new(stream)) => r,
            _ = stop.changed() => return,
        };
        let result = match result {
            Ok(Some(session)) => match self.config.behaviour {
                Behaviour::XapiCompat => session.serve_xapi(stop).await,
                Behaviour::Modern => session.serve_modern(stop).await,
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!("nbd connection ended: {e}");
        }
    }
}

struct SlotGuard<'a>(&'a AtomicUsize);
impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Connection<'a> {
    config: &'a ServerConfig,
    resolver: &'a dyn ExportResolver,
}

/// What the handshake agreed for the transmission phase.
struct Session {
    stream: BoxStream,
    export: Arc<dyn Export>,
    structured: bool,
    block_status: bool,
}

/// Options the Modern handshake accumulates before GO/EXPORT_NAME.
#[derive(Default)]
struct Agreed {
    structured: bool,
    block_status: bool,
}

async fn reply(s: &mut BoxStream, option: u32, reply: u32, payload: &[u8]) -> Result<()> {
    let mut msg = OptionReplyHeader::encode(option, reply, payload.len() as u32).to_vec();
    msg.extend_from_slice(payload);
    s.write_all(&msg).await?;
    s.flush().await?;
    Ok(())
}

impl Connection<'_> {
    fn modern(&self) -> bool {
        self.config.behaviour == Behaviour::Modern
    }

    /// Ok(None) when the client ended the handshake (ABORT) or the link must close quietly.
    async fn handshake(&self, mut s: BoxStream) -> Result<Option<Session>> {
        let flags =
            if self.modern() { proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES } else { proto::FLAG_FIXED_NEWSTYLE };
        let mut greeting = Vec::with_capacity(18);
        greeting.extend_from_slice(&proto::NBD_MAGIC.to_be_bytes());
        greeting.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&flags.to_be_bytes());
        s.write_all(&greeting).await?;
        s.flush().await?;
        let client_flags = u32::from_be_bytes(read_array(&mut s, "reading client flags").await?);
        let fixed = client_flags & u32::from(proto::FLAG_FIXED_NEWSTYLE) != 0;
        let no_zeroes = self.modern() && client_flags & u32::from(proto::FLAG_NO_ZEROES) != 0;
        if self.modern() && client_flags & !u32::from(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES) != 0 {
            return Err(Error::Malformed("unknown client flags"));
        }
        if let Some(tls) = &self.config.tls {
            if !fixed {
                return Err(Error::NotFixedNewstyle);
            }
            // Until STARTTLS: xapi answers TLS_REQD to everything else and drops EXPORT_NAME/ABORT.
            loop {
                let (option, _payload) = read_option(&mut s).await?;
                match option {
                    proto::OPT_STARTTLS => {
                        reply(&mut s, option, proto::REP_ACK, &[]).await?;
                        let tls = tokio_rustls::TlsAcceptor::from(tls.clone())
                            .accept(s)
                            .await
                            .map_err(|e| Error::Tls(e.to_string()))?;
                        s = Box::new(tls);
                        break;
                    }
                    proto::OPT_EXPORT_NAME | proto::OPT_ABORT => return Ok(None),
                    _ => reply(&mut s, option, proto::REP_ERR_TLS_REQD, &[]).await?,
                }
            }
        }
        let tls_active = self.config.tls.is_some();
        let mut agreed = Agreed::default();
        loop {
            let (option, payload) = read_option(&mut s).await?;
            match option {
                proto::OPT_STARTTLS => {
                    let r = if tls_active { proto::REP_ERR_INVALID } else { proto::REP_ERR_POLICY };
                    reply(&mut s, option, r, &[]).await?;
                }
                proto::OPT_ABORT => {
                    // The client may already be gone; the ACK is a courtesy.
                    let _ = reply(&mut s, option, proto::REP_ACK, &[]).await;
                    return Ok(None);
                }
                proto::OPT_EXPORT_NAME => {
                    let Ok(name) = std::str::from_utf8(&payload) else {
                        return Ok(None);
                    };
                    let export = match self.resolver.resolve(name).await {
                        Ok(e) => e,
                        Err(Refusal(why)) => {
                            tracing::info!("nbd: export {name:?} refused: {why}");
                            return Ok(None);
                        }
                    };
                    let mut msg = Vec::with_capacity(10 + proto::EXPORT_NAME_PADDING);
                    msg.extend_from_slice(&export.size().to_be_bytes());
                    msg.extend_from_slice(&self.transmission_flags(export.as_ref(), &agreed).to_be_bytes());
                    if !no_zeroes {
                        msg.extend_from_slice(&[0; proto::EXPORT_NAME_PADDING]);
                    }
                    s.write_all(&msg).await?;
                    s.flush().await?;
                    return Ok(Some(Session {
                        stream: s,
                        export,
                        structured: agreed.structured,
                        block_status: agreed.block_status,
                    }));
                }
                proto::OPT_LIST if !self.modern() => reply(&mut s, option, proto::REP_ERR_POLICY, &[]).await?,
                _ if !self.modern() => reply(&mut s, option, proto::REP_ERR_UNSUP, &[]).await?,
                proto::OPT_LIST => {
                    for name in self.resolver.list() {
                        reply(&mut s, option, proto::REP_SERVER, &proto::string32(&name)).await?;
                    }
                    reply(&mut s, option, proto::REP_ACK, &[]).await?;
                }
                proto::OPT_STRUCTURED_REPLY if payload.is_empty() => {
                    agreed.structured = true;
                    reply(&mut s, option, proto::REP_ACK, &[]).await?;
                }
                proto::OPT_STRUCTURED_REPLY => {
                    reply(&mut s, option, proto::REP_ERR_INVALID, b"no payload expected").await?
                }
                proto::OPT_SET_META_CONTEXT | proto::OPT_LIST_META_CONTEXT => {
                    self.meta_context(&mut s, option, &payload, &mut agreed).await?
                }
                proto::OPT_INFO | proto::OPT_GO => {
                    if let Some(export) = self.info(&mut s, option, &payload, &agreed).await? {
                        return Ok(Some(Session {
                            stream: s,
                            export,
                            structured: agreed.structured,
                            block_status: agreed.block_status,
                        }));
                    }
                }
                _ => reply(&mut s, option, proto::REP_ERR_UNSUP, &[]).await?,
            }
        }
    }

    fn transmission_flags(&self, export: &dyn Export, agreed: &Agreed) -> u16 {
        if !self.modern() {
            return proto::TFLAG_HAS_FLAGS | proto::TFLAG_READ_ONLY;
        }
        let mut flags = proto::TFLAG_HAS_FLAGS;
        if agreed.structured {
            flags |= proto::TFLAG_SEND_DF;
        }
        if export.writable() {
            flags |= proto::TFLAG_SEND_FLUSH;
        } else {
            // Read-only data is the same on every connection.
            flags |= proto::TFLAG_READ_ONLY | proto::TFLAG_CAN_MULTI_CONN;
        }
        flags
    }

    async fn meta_context(&self, s: &mut BoxStream, option: u32, payload: &[u8], agreed: &mut Agreed) -> Result<()> {
        if !agreed.structured {
            return reply(s, option, proto::REP_ERR_INVALID, b"structured replies first").await;
        }
        let mut c = Cursor::new(payload);
        let parsed = c.string32().and_then(|_export| {
            let n = c.u32()?;
            (0..n).map(|_| c.string32()).collect::<Option<Vec<_>>>()
        });
        let Some(queries) = parsed.filter(|_| c.remaining() == 0) else {
            return reply(s, option, proto::REP_ERR_INVALID, b"malformed meta context request").await;
        };
        let wanted = if option == proto::OPT_LIST_META_CONTEXT {
            queries.is_empty() || queries.iter().any(|q| *q == proto::BASE_ALLOCATION || *q == "base:")
        } else {
            queries.contains(&proto::BASE_ALLOCATION)
        };
        if option == proto::OPT_SET_META_CONTEXT {
            agreed.block_status = wanted;
        }
        if wanted {
            let mut body = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
            body.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
            reply(s, option, proto::REP_META_CONTEXT, &body).await?;
        }
        reply(s, option, proto::REP_ACK, &[]).await
    }

    /// NBD_OPT_INFO / NBD_OPT_GO; returns the export when GO succeeded.
    async fn info(
        &self,
        s: &mut BoxStream,
        option: u32,
        payload: &[u8],
        agreed: &Agreed,
    ) -> Result<Option<Arc<dyn Export>>> {
        let mut c = Cursor::new(payload);
        let parsed = c.string32().and_then(|name| {
            let n = c.u16()?;
            let requests = (0..n).map(|_| c.u16()).collect::<Option<Vec<_>>>()?;
            Some((name, requests))
        });
        let Some((name, requests)) = parsed.filter(|_| c.remaining() == 0) else {
            reply(s, option, proto::REP_ERR_INVALID, b"malformed INFO/GO request").await?;
            return Ok(None);
        };
        let export = match self.resolver.resolve(name).await {
            Ok(e) => e,
            Err(Refusal(why)) => {
                reply(s, option, proto::REP_ERR_UNKNOWN, why.as_bytes()).await?;
                return Ok(None);
            }
        };
        let mut info = proto::INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&export.size().to_be_bytes());
        info.extend_from_slice(&self.transmission_flags(export.as_ref(), agreed).to_be_bytes());
        reply(s, option, proto::REP_INFO, &info).await?;
        if requests.contains(&proto::INFO_BLOCK_SIZE) {
            let mut bs = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [1, 4096, proto::DEFAULT_MAX_REQUEST] {
                bs.extend_from_slice(&v.to_be_bytes());
            }
            reply(s, option, proto::REP_INFO, &bs).await?;
        }
        if requests.contains(&proto::INFO_NAME) {
            let mut n = proto::INFO_NAME.to_be_bytes().to_vec();
            n.extend_from_slice(name.as_bytes());
            reply(s, option, proto::REP_INFO, &n).await?;
        }
        reply(s, option, proto::REP_ACK, &[]).await?;
        Ok((option == proto::OPT_GO).then_some(export))
    }
}

async fn read_option(s: &mut BoxStream) -> Result<(u32, Vec<u8>)> {
    let h = OptionHeader::decode(&read_array(s, "reading an option").await?);
    if h.magic != proto::IHAVEOPT {
        return Err(Error::BadMagic { what: "option", expected: proto::IHAVEOPT, found: h.magic });
    }
    Ok((h.option, read_payload(s, h.len, MAX_OPTION, "option").await?))
}

async fn read_request<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Request>> {
    let raw = tokio::select! {
        raw = read_array::<{ Request::SIZE }, _>(r, "reading a request") => raw?,
        _ = stop.changed() => return Ok(None),
    };
    let req = Request::decode(&raw);
    if req.magic != proto::REQUEST_MAGIC {
        return Err(Error::BadMagic {
            what: "request",
            expected: proto::REQUEST_MAGIC.into(),
            found: req.magic.into(),
        });
    }
    Ok(Some(req))
}

fn errno_of(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => proto::EPERM,
        io::ErrorKind::InvalidInput => proto::EINVAL,
        io::ErrorKind::StorageFull => proto::ENOSPC,
        io::ErrorKind::OutOfMemory => proto::ENOMEM,
        io::ErrorKind::Unsupported => proto::ENOTSUP,
        _ => proto::EIO,
    }
}

fn in_range(export: &dyn Export, offset: u64, len: u32) -> bool {
    offset.checked_add(len.into()).is_some_and(|end| end <= export.size())
}

impl Session {
    /// xapi-nbd's loop: one request at a time; any error reply ends the session, and a read that
    /// fails after its header went out drops the link.
    async fn serve_xapi(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        while let Some(req) = read_request(&mut self.stream, &mut stop).await? {
            let errno = match req.command {
                proto::CMD_DISC => return Ok(()),
                proto::CMD_WRITE => proto::EPERM,
                proto::CMD_READ if req.offset % XAPI_SECTOR != 0 || u64::from(req.len) % XAPI_SECTOR != 0 => {
                    proto::EINVAL
                }
                proto::CMD_READ => {
                    self.stream.write_all(&proto::encode_simple_reply(0, req.handle)).await?;
                    if !in_range(self.export.as_ref(), req.offset, req.len) {
                        return Err(Error::OutOfRange {
                            offset: req.offset,
                            len: req.len.into(),
                            size: self.export.size(),
                        });
                    }
                    for at in (0..req.len).step_by(READ_PIECE as usize) {
                        let n = READ_PIECE.min(req.len - at);
                        let data = self.export.read_at(req.offset + u64::from(at), n).await?;
                        check_len(&data, n)?;
                        self.stream.write_all(&data).await?;
                    }
                    self.stream.flush().await?;
                    continue;
                }
                _ => proto::EINVAL,
            };
            self.stream.write_all(&proto::encode_simple_reply(errno, req.handle)).await?;
            self.stream.flush().await?;
            return Ok(());
        }
        Ok(())
    }

    /// Requests run concurrently; a writer task serialises the replies.
    async fn serve_modern(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let (mut r, w) = tokio::io::split(self.stream);
        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(MODERN_IN_FLIGHT);
        let writer = tokio::spawn(write_replies(w, rx));
        let limit = Arc::new(Semaphore::new(MODERN_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let ctx =
            Arc::new(Handler { export: self.export, structured: self.structured, block_status: self.block_status });
        let result = loop {
            let req = match read_request(&mut r, &mut stop).await {
                Ok(Some(req)) => req,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let payload = match req.command {
                proto::CMD_DISC => break Ok(()),
                proto::CMD_WRITE if req.len > proto::DEFAULT_MAX_REQUEST => {
                    break Err(Error::Oversized {
                        what: "write request",
                        len: req.len.into(),
                        limit: proto::DEFAULT_MAX_REQUEST.into(),
                    });
                }
                proto::CMD_WRITE => {
                    let mut buf = BytesMut::zeroed(req.len as usize);
                    if let Err(e) = crate::stream::read_exact(&mut r, &mut buf, "reading write data").await {
                        break Err(e);
                    }
                    Some(buf.freeze())
                }
                _ => None,
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break Ok(());
            };
            let (ctx, tx) = (ctx.clone(), tx.clone());
            tasks.spawn(async move {
                let reply = ctx.answer(req, payload).await;
                let _ = tx.send(reply).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        };
        // Answer what was already asked before closing.
        while tasks.join_next().await.is_some() {}
        drop(tx);
        let _ = writer.await;
        result
    }
}

fn check_len(data: &Bytes, want: u32) -> Result<()> {
    if data.len() != want as usize {
        return Err(Error::Io(Arc::new(io::Error::other(format!(
            "export returned {} bytes for a {want}-byte read",
            data.len()
        )))));
    }
    Ok(())
}

async fn write_replies<W: AsyncWrite>(mut w: tokio::io::WriteHalf<W>, mut rx: mpsc::Receiver<Vec<Bytes>>) {
    while let Some(parts) = rx.recv().await {
        for part in parts {
            if w.write_all(&part).await.is_err() {
                return;
            }
        }
        // Flush only when idle, so pipelined replies share TLS records and syscalls.
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

struct Handler {
    export: Arc<dyn Export>,
    structured: bool,
    block_status: bool,
}

impl Handler {
    async fn answer(&self, req: Request, payload: Option<Bytes>) -> Vec<Bytes> {
        let result = match req.command {
            proto::CMD_READ => return self.read(req).await,
            proto::CMD_WRITE if !self.export.writable() => Err(proto::EPERM),
            proto::CMD_WRITE if !in_range(self.export.as_ref(), req.offset, req.len) => Err(proto::ENOSPC),
            proto::CMD_WRITE => {
                self.export.write_at(req.offset, payload.unwrap_or_default()).await.map_err(|e| errno_of(&e))
            }
            proto::CMD_FLUSH => self.export.flush().await.map_err(|e| errno_of(&e)),
            proto::CMD_BLOCK_STATUS if self.block_status => return self.block_status(req).await,
            _ => Err(proto::EINVAL),
        };
        vec![Bytes::copy_from_slice(&proto::encode_simple_reply(result.err().unwrap_or(0), req.handle))]
    }

    fn error(&self, req: &Request, errno: u32, message: &str) -> Vec<Bytes> {
        if !self.structured {
            return vec![Bytes::copy_from_slice(&proto::encode_simple_reply(errno, req.handle))];
        }
        let message = &message.as_bytes()[..message.len().min(1024)];
        let mut body = BytesMut::with_capacity(6 + message.len());
        body.put_u32(errno);
        body.put_u16(message.len() as u16);
        body.put_slice(message);
        chunk(req.handle, proto::REPLY_TYPE_ERROR, body.freeze())
    }

    async fn read(&self, req: Request) -> Vec<Bytes> {
        if !in_range(self.export.as_ref(), req.offset, req.len) || req.len > proto::DEFAULT_MAX_REQUEST {
            return self.error(&req, proto::EINVAL, "read beyond the end of the export or too large");
        }
        let data = match self.export.read_at(req.offset, req.len).await {
            Ok(d) if d.len() == req.len as usize => d,
            Ok(_) => return self.error(&req, proto::EIO, "short read from the export"),
            Err(e) => return self.error(&req, errno_of(&e), &e.to_string()),
        };
        if !self.structured {
            return vec![Bytes::copy_from_slice(&proto::encode_simple_reply(0, req.handle)), data];
        }
        // A zero buffer travels as a hole unless the client forbade fragmenting.
        if req.flags & proto::CMD_FLAG_DF == 0 && data.iter().all(|&b| b == 0) {
            let mut hole = BytesMut::with_capacity(12);
            hole.put_u64(req.offset);
            hole.put_u32(req.len);
            return chunk(req.handle, proto::REPLY_TYPE_OFFSET_HOLE, hole.freeze());
        }
        let header = ChunkHeader {
            flags: proto::REPLY_FLAG_DONE,
            kind: proto::REPLY_TYPE_OFFSET_DATA,
            handle: req.handle,
            len: req.len + 8,
        };
        let mut head = BytesMut::with_capacity(ChunkHeader::SIZE + 8);
        head.put_slice(&header.encode());
        head.put_u64(req.offset);
        vec![head.freeze(), data]
    }

    async fn block_status(&self, req: Request) -> Vec<Bytes> {
        if !in_range(self.export.as_ref(), req.offset, req.len) || req.len == 0 {
            return self.error(&req, proto::EINVAL, "block status beyond the end of the export");
        }
        let extents = match self.export.block_status(req.offset, req.len).await {
            Ok(e) => e,
            Err(e) => return self.error(&req, errno_of(&e), &e.to_string()),
        };
        let end = req.offset + u64::from(req.len);
        let mut body = BytesMut::new();
        body.put_u32(BASE_ALLOCATION_ID);
        let mut at = req.offset;
        // Descriptors must be contiguous from the request offset, so gaps or overlaps in what the
        // export reports are clipped rather than forwarded.
        for e in &extents {
            if e.offset > at || e.offset.saturating_add(e.len) <= at {
                continue;
            }
            let stop = e.offset.saturating_add(e.len).min(end);
            body.put_u32((stop - at) as u32);
            body.put_u32(e.flags);
            at = stop;
            if at == end || req.flags & proto::CMD_FLAG_REQ_ONE != 0 {
                break;
            }
        }
        if at == req.offset {
            // The export said nothing usable about this offset: report data, which is always safe.
            body.put_u32(req.len);
            body.put_u32(0);
        }
        chunk(req.handle, proto::REPLY_TYPE_BLOCK_STATUS, body.freeze())
    }
}

/// One final structured chunk.
fn chunk(handle: u64, kind: u16, body: Bytes) -> Vec<Bytes> {
    let header = ChunkHeader { flags: proto::REPLY_FLAG_DONE, kind, handle, len: body.len() as u32 };
    vec![Bytes::copy_from_slice(&header.encode()), body]
}
