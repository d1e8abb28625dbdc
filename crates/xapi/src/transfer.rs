//! xapi's HTTP handlers (`/export_raw_vdi`, `/import_raw_vdi`, `/export`, `/import`,
//! `/pool/xmldbdump`): streamed both ways, each tied to a task created with `task.create`
//! (as Xen Orchestra does) so it can be watched and cancelled, and the transfer's real
//! outcome is read from the task once the body has been moved.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt, TryStream, TryStreamExt};
use reqwest::Url;
use xenvault_xapi_wire::Value;

use crate::client::http_error;
use crate::task::TaskStatus;
use crate::{Client, Error, Ref};

/// Disk image formats of `/export_raw_vdi` and `/import_raw_vdi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Vhd,
    /// Export only; xapi uses it for disks past VHD's 2 TiB limit.
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// `use_compression` of a VM export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn query_value(self) -> &'static str {
        match self {
            Compression::None => "false",
            Compression::Gzip => "true",
            Compression::Zstd => "zstd",
        }
    }
}

/// Where `/import_raw_vdi` writes.
#[derive(Debug, Clone, Copy)]
pub enum ImportTarget<'a> {
    /// Into this existing VDI (a VHD writes only the blocks it holds).
    Vdi(&'a Ref),
    /// Into a new VDI created in this SR.
    Sr(&'a Ref),
}

/// Flags of a VM import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmImportOptions {
    /// Keep the exported identities (MACs, UUIDs) instead of making new ones.
    pub restore: bool,
    /// Import despite checksum or version problems.
    pub force: bool,
}

/// A streamed download. It yields an error instead of ending quietly when the host reports
/// the transfer failed. Dropped before its end, it cancels and destroys its task.
pub struct Download {
    task: Ref,
    content_length: Option<u64>,
    body: BoxStream<'static, Result<Bytes, Error>>,
    /// Set once the task's outcome was read (which destroys it).
    settled: Arc<AtomicBool>,
    client: Client,
}

impl Drop for Download {
    fn drop(&mut self) {
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        // Abandoned or broken: do not leave the task pending on the host.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, task) = (self.client.clone(), self.task.clone());
        runtime.spawn(async move {
            if let Err(e) = client.cancel_task(&task).await {
                tracing::debug!(%task, error = %e, "task.cancel of an abandoned download");
            }
            client.discard_task(&task).await;
        });
    }
}

impl Download {
    /// The task tracking the transfer (its progress can be read, and it can be cancelled).
    pub fn task(&self) -> &Ref {
        &self.task
    }

    /// The length announced by the host; xapi's exports usually announce none.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
}

impl Stream for Download {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.body.poll_next_unpin(cx)
    }
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("task", &self.task)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

const MAX_REDIRECTS: usize = 10;

impl Client {
    /// `GET /export_raw_vdi`: the disk, or with `base` only what differs from it (a
    /// differencing VHD, or a raw image with unchanged regions zeroed).
    pub async fn export_raw_vdi(&self, vdi: &Ref, format: DiskFormat, base: Option<&Ref>) -> Result<Download, Error> {
        let mut query = vec![("vdi", vdi.to_string()), ("format", format.as_str().to_owned())];
        if let Some(base) = base {
            query.push(("base", base.to_string()));
        }
        self.download("export_raw_vdi", &query, "xenvault export_raw_vdi").await
    }

    /// `GET /export`: an XVA of a VM or snapshot.
    pub async fn export_vm(&self, vm: &Ref, compression: Compression) -> Result<Download, Error> {
        let query = [("ref", vm.to_string()), ("use_compression", compression.query_value().into())];
        self.download("export", &query, "xenvault export").await
    }

    /// `GET /pool/xmldbdump`: the pool database.
    pub async fn pool_xmldbdump(&self) -> Result<Download, Error> {
        self.download("pool/xmldbdump", &[], "xenvault xmldbdump").await
    }

    /// `PUT /pool/xmldbdump` of a database dump of `content_length` bytes (what
    /// `xe pool-restore-database` sends). With `dry_run` the host only checks it; otherwise
    /// xapi restarts on it after a fuse (30 s), which ends every session.
    pub async fn pool_restore_database<S>(&self, body: S, content_length: u64, dry_run: bool) -> Result<(), Error>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let query = [("dry_run", dry_run.to_string())];
        self.upload("pool/xmldbdump", &query, body, content_length, "xenvault restore database").await.map(drop)
    }

    /// `PUT /import_raw_vdi` of exactly `content_length` bytes (xapi refuses chunked
    /// uploads). Returns the VDI written: the new one when importing into an SR.
    pub async fn import_raw_vdi<S>(
        &self,
        target: ImportTarget<'_>,
        format: DiskFormat,
        body: S,
        content_length: u64,
    ) -> Result<Ref, Error>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let (key, reference) = match target {
            ImportTarget::Vdi(r) => ("vdi", r),
            ImportTarget::Sr(r) => ("sr_id", r),
        };
        let query = [(key, reference.to_string()), ("format", format.as_str().to_owned())];
        let result = self.upload("import_raw_vdi", &query, body, content_length, "xenvault import_raw_vdi").await?;
        match (target, result.as_str()) {
            (_, Some(r)) if r.starts_with("OpaqueRef:") => Ok(Ref::new(r)),
            (ImportTarget::Vdi(vdi), _) => Ok(vdi.clone()),
            (ImportTarget::Sr(_), _) => Err(Error::malformed(format!("import into an SR returned {result:?}"))),
        }
    }

    /// `PUT /import` of an XVA of `content_length` bytes. Returns the new VMs.
    pub async fn import_vm<S>(
        &self,
        sr: &Ref,
        body: S,
        content_length: u64,
        options: VmImportOptions,
    ) -> Result<Vec<Ref>, Error>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let mut query = vec![("sr_id", sr.to_string())];
        if options.restore {
            query.push(("restore", "true".into()));
        }
        if options.force {
            query.push(("force", "true".into()));
        }
        let result = self.upload("import", &query, body, content_length, "xenvault import").await?;
        match result {
            Value::Array(items) => items.iter().map(Ref::from_value).collect(),
            Value::Str(r) if r.starts_with("OpaqueRef:") => Ok(vec![Ref::new(r)]),
            other => Err(Error::malformed(format!("import returned {other:?}"))),
        }
    }

    /// The URL of a handler with its parameters, the session and, when given, the task.
    fn transfer_url(&self, path: &str, query: &[(&str, String)], task: Option<&Ref>) -> Result<Url, Error> {
        let session = self.session_or_err()?;
        let mut url = self.endpoint(path)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("session_id", session.as_str());
            if let Some(task) = task {
                pairs.append_pair("task_id", task.as_str());
            }
        }
        Ok(url)
    }

    async fn download(&self, path: &str, query: &[(&str, String)], label: &str) -> Result<Download, Error> {
        let task = self.create_task(label, "").await?;
        let stall = self.stall_watch(path, query);
        let sent = self.get_following_redirects(path, query, &task, &stall).await;
        let response = self.accepted(&task, sent).await?;
        let content_length = response.content_length();
        let settled = Arc::new(AtomicBool::new(false));
        let (client, waited, done) = (self.clone(), task.clone(), settled.clone());
        let finish = Box::pin(async move {
            let outcome = client.wait_task(&waited, |_| {}, None).await;
            done.store(true, Ordering::Release);
            outcome.map(drop)
        });
        Ok(Download {
            task,
            content_length,
            body: guard_body(stall_limited(response.bytes_stream(), stall), finish),
            settled,
            client: self.clone(),
        })
    }

    async fn get_following_redirects(
        &self,
        path: &str,
        query: &[(&str, String)],
        task: &Ref,
        stall: &StallWatch,
    ) -> Result<reqwest::Response, Error> {
        let mut url = self.transfer_url(path, query, Some(task))?;
        for _ in 0..MAX_REDIRECTS {
            let sent = tokio::time::timeout(stall.idle, self.inner.http.get(url.clone()).send());
            let response = sent.await.map_err(|_| stall.error())??;
            match redirect_target(&url, &response)? {
                Some(next) => url = next,
                None => return Ok(response),
            }
        }
        Err(Error::Transport(format!("more than {MAX_REDIRECTS} redirects for /{path}")))
    }

    async fn upload<S>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: S,
        content_length: u64,
        label: &str,
    ) -> Result<Value, Error>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let task = self.create_task(label, "").await?;
        let stall = self.stall_watch(path, query);
        let turn = HostTurn::default();
        let body = reqwest::Body::wrap_stream(turn.watch(body));
        let sent = tokio::select! {
            sent = self.put_body(path, query, &task, body, content_length) => sent,
            () = turn.stalled(stall.idle) => Err(stall.error()),
        };
        let response = self.accepted(&task, sent).await?;
        // The answer carries nothing: the outcome is the task's.
        match tokio::time::timeout(stall.idle, response.bytes()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the end of an upload answer"),
            Err(_) => tracing::debug!("the end of an upload answer did not come"),
        }
        self.wait_task(&task, |_| {}, None).await
    }

    /// What a transfer to `path` reports when it stalls.
    fn stall_watch(&self, path: &str, query: &[(&str, String)]) -> StallWatch {
        let params: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        StallWatch {
            host: self.base_url().origin().ascii_serialization(),
            transfer: format!("{path} of {}", params.join(", ")),
            idle: self.inner.transfer_idle_timeout,
        }
    }

    /// Finds where the upload must go with an empty probe (a streamed body cannot be sent
    /// twice, so a 302 must be learnt first; Xen Orchestra does the same), then sends it.
    async fn put_body(
        &self,
        path: &str,
        query: &[(&str, String)],
        task: &Ref,
        body: reqwest::Body,
        content_length: u64,
    ) -> Result<reqwest::Response, Error> {
        // Without task_id: the probe is meant to fail and must not fail the task.
        let mut url = self.transfer_url(path, query, None)?;
        for hop in 0..=MAX_REDIRECTS {
            let probe = self.inner.http.put(url.clone()).header(http::header::CONTENT_LENGTH, 0).send().await?;
            match redirect_target(&url, &probe)? {
                Some(next) if hop < MAX_REDIRECTS => url = next,
                Some(_) => {
                    return Err(Error::Transport(format!("more than {MAX_REDIRECTS} redirects for /{path}")));
                }
                None => break,
            }
        }
        url.query_pairs_mut().append_pair("task_id", task.as_str());
        Ok(self.inner.http.put(url).header(http::header::CONTENT_LENGTH, content_length).body(body).send().await?)
    }

    /// The response of a transfer the host accepted. Otherwise the task is dropped and the
    /// error returned.
    async fn accepted(&self, task: &Ref, sent: Result<reqwest::Response, Error>) -> Result<reqwest::Response, Error> {
        match sent {
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => Err(self.failed_transfer(task, response).await),
            Err(e) => {
                self.discard_task(task).await;
                Err(e)
            }
        }
    }

    /// The error of a transfer the host refused: the task's failure when it recorded one
    /// (more precise), else the HTTP status.
    async fn failed_transfer(&self, task: &Ref, response: reqwest::Response) -> Error {
        let http = http_error(response).await;
        let error = match self.task_status(task).await {
            Ok(TaskStatus::Failure) => self.task_error(task).await,
            _ => http,
        };
        self.discard_task(task).await;
        error
    }

    async fn discard_task(&self, task: &Ref) {
        if let Err(e) = self.call("task.destroy", &[task.into()]).await {
            tracing::debug!(%task, error = %e, "task.destroy failed");
        }
    }
}

/// Where a redirect answer points, relative locations resolved. Query parameters the new
/// location dropped (session, task) are carried over.
fn redirect_target(current: &Url, response: &reqwest::Response) -> Result<Option<Url>, Error> {
    if !response.status().is_redirection() {
        return Ok(None);
    }
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| Error::malformed(format!("HTTP {} without Location", response.status())))?;
    let mut next = current.join(location).map_err(|e| Error::malformed(format!("redirect to {location:?}: {e}")))?;
    let present: Vec<String> = next.query_pairs().map(|(k, _)| k.into_owned()).collect();
    let missing: Vec<(String, String)> = current
        .query_pairs()
        .filter(|(k, _)| !present.iter().any(|p| p == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !missing.is_empty() {
        next.query_pairs_mut().extend_pairs(missing);
    }
    tracing::debug!(to = %next.host_str().unwrap_or_default(), "following redirect");
    Ok(Some(next))
}

/// Bytes read to recognise, and then describe, an error disguised as a body.
const DISGUISED_HEAD: usize = 5;
const DISGUISED_SHOWN: usize = 1024;

/// Passes the body through, except that a body starting with `HTTP/` (xapi sometimes writes
/// an error response after its 200 header) becomes an error, and at the end the task's
/// outcome is awaited so a failed transfer does not look complete.
fn guard_body(
    body: BoxStream<'static, Result<Bytes, Error>>,
    finish: BoxFuture<'static, Result<(), Error>>,
) -> BoxStream<'static, Result<Bytes, Error>> {
    struct State {
        body: BoxStream<'static, Result<Bytes, Error>>,
        head_checked: bool,
        finish: Option<BoxFuture<'static, Result<(), Error>>>,
    }
    let state = State { body, head_checked: false, finish: Some(finish) };
    futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        if !st.head_checked {
            st.head_checked = true;
            match read_head(&mut st.body).await {
                Ok(head) if head.starts_with(b"HTTP/") => {
                    return Some((Err(disguised_error(&head)), None));
                }
                Ok(head) if !head.is_empty() => return Some((Ok(head), Some(st))),
                Ok(_) => {}
                Err(e) => return Some((Err(e), None)),
            }
        }
        match st.body.next().await {
            Some(Ok(chunk)) => Some((Ok(chunk), Some(st))),
            Some(Err(e)) => Some((Err(e), None)),
            None => match st.finish.take()?.await {
                Ok(()) => None,
                Err(e) => Some((Err(e), None)),
            },
        }
    })
    .boxed()
}

/// The first bytes of the body: enough to see `HTTP/`, and when it is there, enough to
/// show the message.
async fn read_head(body: &mut BoxStream<'static, Result<Bytes, Error>>) -> Result<Bytes, Error> {
    let mut head = BytesMut::new();
    loop {
        let enough = if head.len() >= DISGUISED_HEAD && head.starts_with(b"HTTP/") {
            head.len() >= DISGUISED_SHOWN
        } else {
            head.len() >= DISGUISED_HEAD
        };
        if enough {
            return Ok(head.freeze());
        }
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => return Ok(head.freeze()),
        }
    }
}

fn disguised_error(head: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&head[..head.len().min(DISGUISED_SHOWN)]);
    let status =
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(http::StatusCode::BAD_GATEWAY.as_u16());
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(8).collect();
    Error::Http { status, message: format!("the host answered 200 with an error as body: {}", lines.join(" | ")) }
}

/// Where a transfer goes and how long it may sit idle: the parts of [`Error::Stalled`].
#[derive(Debug, Clone)]
struct StallWatch {
    host: String,
    transfer: String,
    idle: Duration,
}

impl StallWatch {
    fn error(&self) -> Error {
        Error::Stalled { host: self.host.clone(), transfer: self.transfer.clone(), idle: self.idle }
    }
}

/// A download body that fails with [`Error::Stalled`] when no chunk comes for the idle time.
fn stall_limited(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    stall: StallWatch,
) -> BoxStream<'static, Result<Bytes, Error>> {
    futures::stream::unfold(Some(body.boxed()), move |body| {
        let stall = stall.clone();
        async move {
            let mut body = body?;
            match tokio::time::timeout(stall.idle, body.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                Ok(Some(Err(e))) => Some((Err(e.into()), None)),
                Ok(None) => None,
                Err(_) => Some((Err(stall.error()), None)),
            }
        }
    })
    .boxed()
}

/// Since when an upload has been waiting on the host: from the moment a chunk (or the end)
/// was handed to the connection until the connection asks for the next one. While our own
/// source is slow to produce, the clock does not run.
#[derive(Debug, Clone)]
struct HostTurn(Arc<Mutex<Option<Instant>>>);

impl Default for HostTurn {
    /// Connecting and sending the headers are the host's turn.
    fn default() -> Self {
        HostTurn(Arc::new(Mutex::new(Some(Instant::now()))))
    }
}

impl HostTurn {
    fn set(&self, since: Option<Instant>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = since;
    }

    fn waited(&self) -> Option<Duration> {
        let since = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        since.map(|s| s.elapsed())
    }

    /// `body`, noting each hand-over.
    fn watch<S: TryStream + Send + 'static>(
        &self,
        body: S,
    ) -> impl Stream<Item = Result<S::Ok, S::Error>> + Send + 'static {
        let turn = self.clone();
        let mut body = Box::pin(body.into_stream());
        futures::stream::poll_fn(move |cx| {
            turn.set(None);
            let polled = body.as_mut().poll_next(cx);
            if polled.is_ready() {
                turn.set(Some(Instant::now()));
            }
            polled
        })
    }

    /// Resolves once the host has held things up for `idle`.
    async fn stalled(&self, idle: Duration) {
        loop {
            let left = match self.waited() {
                Some(waited) if waited >= idle => return,
                Some(waited) => idle - waited,
                None => idle,
            };
            tokio::time::sleep(left).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that accepts the upload and never reads it: once the socket buffers are full,
    /// the connection stops asking for chunks and the watch fires.
    #[tokio::test]
    async fn an_upload_the_host_stops_reading_is_seen_as_stalled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let peer = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::client_config(&crate::ServerTrust::Insecure).expect("tls"))
            .build()
            .expect("client");
        let chunks = (0..256).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20])));
        let turn = HostTurn::default();
        let body = reqwest::Body::wrap_stream(turn.watch(futures::stream::iter(chunks)));
        let put = http.put(format!("http://{addr}/import")).body(body).send();
        let outcome = tokio::select! {
            sent = put => Err(sent),
            () = turn.stalled(Duration::from_millis(300)) => Ok(()),
        };
        peer.abort();
        assert!(outcome.is_ok(), "the upload ended instead of stalling: {outcome:?}");
    }

    /// While our own source is slow to produce, the host is not blamed.
    #[tokio::test]
    async fn a_slow_source_is_not_a_stalled_host() {
        let turn = HostTurn::default();
        let slow = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"late"))
        });
        let mut body = Box::pin(turn.watch(slow));
        let read = tokio::select! {
            chunk = body.next() => chunk.map(|c| c.map(|b| b.len()).ok()),
            () = turn.stalled(Duration::from_millis(200)) => None,
        };
        assert_eq!(read, Some(Some(4)));
    }
}
