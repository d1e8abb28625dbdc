//! Repository locations on a file server reached without a mount (NFS, SMB): the protocol
//! clients (`crate::nfs`, `crate::smb`) give a few file operations ([`RemoteFs`]), and this
//! module makes an OpenDAL service of them, so they sit under the same layers as the other
//! backends (retries, timeouts, the concurrency limit, injected faults in tests).
//!
//! Objects are published as on a local disk: written whole under `.tmp/`, made durable,
//! then renamed into place (or, for a create that must not replace, moved only if the name
//! is free, atomically on the server), so a crash or a lost connection never leaves half an
//! object under its name.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use opendal::raw::*;
use opendal::{Buffer, Capability, Error, ErrorKind, Metadata, MetadataBuilder, OperationContext, Operator, Result};

use crate::local::TEMP_DIR;

/// Start of the message of errors that mean the server could not be reached or the
/// connection broke (`backend::classify` reports them as network errors).
pub(crate) const NETWORK: &str = "network:";

/// A connection failure: temporary, so the retry layer tries again (on a new connection).
pub(crate) fn network_error(what: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{NETWORK} {what}")).set_temporary()
}

/// `host[:port]` or `[v6 address][:port]` → (host, port); None when malformed.
pub(crate) fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    let valid = !host.is_empty() && !host.contains(['/', '@', '?', '#', ' ']);
    valid.then(|| (host.to_string(), port))
}

/// One directory entry or the answer of a stat.
#[derive(Debug, Clone)]
pub(crate) struct RemoteEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// The file operations a protocol client provides. Paths are relative to the location's
/// root and `/`-separated; the client adds its root.
pub(crate) trait RemoteFs: Send + Sync + fmt::Debug + 'static {
    /// Size and modification time of a file, `None` when nothing is there.
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<RemoteEntry>>>;

    /// Up to `len` bytes at `offset` (fewer only at the end of the file).
    fn read<'a>(&'a self, path: &'a str, offset: u64, len: usize) -> BoxFuture<'a, Result<Bytes>>;

    /// Creates the directory `path` (`""`: the location's own); an existing one is fine.
    fn create_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Creates the file `path` (which must not exist), writes `data` and returns once the
    /// server has it on stable storage.
    fn write_new<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>>;

    /// Renames `from` to `to`, over an existing `to` when `replace`; otherwise an existing
    /// `to` is left alone, atomically, and the answer is false.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str, replace: bool) -> BoxFuture<'a, Result<bool>>;

    /// The entries of the directory `path` (without `.` and `..`); NotFound when missing.
    fn read_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<RemoteEntry>>>;

    /// Removes the file `path`; a missing one is fine.
    fn remove<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// A connection opened on first use and opened again after it broke. The backend is
/// opened without contacting anything; the first request connects.
pub(crate) struct Reconnecting<C> {
    current: tokio::sync::Mutex<Option<Arc<C>>>,
}

impl<C> Default for Reconnecting<C> {
    fn default() -> Self {
        Self { current: tokio::sync::Mutex::new(None) }
    }
}

impl<C> Reconnecting<C> {
    /// The open connection, or a new one from `connect`.
    pub async fn get<F>(&self, connect: F) -> Result<Arc<C>>
    where
        F: Future<Output = Result<C>>,
    {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let connection = Arc::new(connect.await?);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets `broken` after a network error, so the next request connects again.
    pub async fn forget(&self, broken: &Arc<C>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *current = None;
        }
    }
}

impl<C> fmt::Debug for Reconnecting<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reconnecting")
    }
}

/// An OpenDAL operator on `fs`.
pub(crate) fn operator(scheme: &'static str, location: &str, fs: Arc<dyn RemoteFs>) -> Operator {
    let service = RemoteService { scheme, location: location.to_string(), fs, known_dirs: Default::default() };
    Operator::from_parts(OperationContext::new(), Arc::new(service))
}

/// Removes the files of `fs`'s `.tmp/` last modified more than `age` ago; returns how many.
pub(crate) async fn remove_old_temp_files(fs: &dyn RemoteFs, age: Duration) -> Result<usize> {
    let entries = match fs.read_dir(TEMP_DIR).await {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.iter().filter(|e| !e.is_dir) {
        let old = entry.modified.is_some_and(|t| now.duration_since(t).is_ok_and(|elapsed| elapsed >= age));
        if old {
            fs.remove(&format!("{TEMP_DIR}/{}", entry.name)).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

struct RemoteService {
    scheme: &'static str,
    location: String,
    fs: Arc<dyn RemoteFs>,
    /// Directories known to exist: a publish creates the missing parents of its object
    /// once per process instead of asking the server every time.
    known_dirs: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for RemoteService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteService").field("location", &self.location).finish_non_exhaustive()
    }
}

fn file_metadata(entry: &RemoteEntry) -> Metadata {
    let mut meta = MetadataBuilder::file(entry.size);
    if let Some(modified) = entry.modified
        && let Ok(time) = Timestamp::try_from(modified)
    {
        meta.last_modified(time);
    }
    meta.build()
}

/// `path` as the service receives it, checked: relative, no `.`/`..`/empty components.
fn object_path(path: &str) -> Result<&str> {
    let path = path.trim_start_matches('/');
    if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(Error::new(ErrorKind::Unexpected, format!("bad object path {path:?}")));
    }
    Ok(path)
}

impl Service for RemoteService {
    type Reader = oio::PositionReader<RemoteReader>;
    type Writer = RemoteWriter;
    type Lister = RemoteLister;
    type Deleter = oio::OneShotDeleter<RemoteDeleter>;
    type Copier = oio::Copier;
    type Composer = ();

    fn info(&self) -> ServiceInfo {
        ServiceInfo::new(self.scheme, &self.location, "")
    }

    fn capability(&self) -> Capability {
        Capability {
            stat: true,
            read: true,
            write: true,
            write_can_empty: true,
            write_can_multi: true,
            write_with_if_not_exists: true,
            create_dir: true,
            delete: true,
            list: true,
            list_with_recursive: true,
            shared: true,
            ..Default::default()
        }
    }

    async fn create_dir(&self, _: &OperationContext, path: &str, _: OpCreateDir) -> Result<RpCreateDir> {
        self.fs.create_dir(path.trim_matches('/')).await?;
        Ok(RpCreateDir::default())
    }

    async fn stat(&self, _: &OperationContext, path: &str, _: OpStat) -> Result<RpStat> {
        let path = object_path(path)?;
        match self.fs.stat(path).await? {
            Some(entry) if !entry.is_dir => Ok(RpStat::new(file_metadata(&entry))),
            Some(_) => Ok(RpStat::new(MetadataBuilder::dir().build())),
            None => Err(Error::new(ErrorKind::NotFound, format!("{path} not found"))),
        }
    }

    fn read(&self, _: &OperationContext, path: &str, _: OpRead) -> Result<Self::Reader> {
        let path = object_path(path)?.to_string();
        Ok(oio::PositionReader::new(RemoteReader { fs: self.fs.clone(), path }))
    }

    fn write(&self, _: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        Ok(RemoteWriter {
            fs: self.fs.clone(),
            known_dirs: self.known_dirs.clone(),
            path: object_path(path)?.to_string(),
            replace: !args.if_not_exists(),
            parts: Vec::new(),
        })
    }

    fn delete(&self, _: &OperationContext) -> Result<Self::Deleter> {
        Ok(oio::OneShotDeleter::new(RemoteDeleter { fs: self.fs.clone() }))
    }

    fn list(&self, _: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        if !args.recursive() {
            return Err(Error::new(ErrorKind::Unsupported, "only recursive listings"));
        }
        Ok(RemoteLister { fs: self.fs.clone(), dir: path.trim_matches('/').to_string(), entries: None })
    }

    fn copy(&self, _: &OperationContext, _: &str, _: &str, _: OpCopy) -> Result<Self::Copier> {
        Err(Error::new(ErrorKind::Unsupported, "copy"))
    }

    async fn rename(&self, _: &OperationContext, _: &str, _: &str, _: OpRename) -> Result<RpRename> {
        Err(Error::new(ErrorKind::Unsupported, "rename"))
    }

    async fn presign(&self, _: &OperationContext, _: &str, _: OpPresign) -> Result<RpPresign> {
        Err(Error::new(ErrorKind::Unsupported, "presign"))
    }
}

struct RemoteReader {
    fs: Arc<dyn RemoteFs>,
    path: String,
}

impl oio::PositionRead for RemoteReader {
    type Handle = (Arc<dyn RemoteFs>, String);

    async fn open(&self) -> Result<Self::Handle> {
        Ok((self.fs.clone(), self.path.clone()))
    }

    async fn read_at((fs, path): &Self::Handle, offset: u64, size: usize) -> Result<Buffer> {
        Ok(Buffer::from(fs.read(path, offset, size).await?))
    }
}

/// Collects the object in memory (the repository writes whole objects it already holds)
/// and publishes it on close.
struct RemoteWriter {
    fs: Arc<dyn RemoteFs>,
    known_dirs: Arc<Mutex<HashSet<String>>>,
    path: String,
    replace: bool,
    parts: Vec<Bytes>,
}

impl RemoteWriter {
    /// Creates `dir` and its missing ancestors, from the location's own directory (`""`)
    /// on; each is asked for once per process.
    async fn ensure_dir(&self, dir: &str) -> Result<()> {
        let mut prefix = String::new();
        for component in std::iter::once("").chain(dir.split('/')) {
            if !prefix.is_empty() && !component.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if self.known_dirs.lock().unwrap_or_else(|p| p.into_inner()).contains(&prefix) {
                continue;
            }
            self.fs.create_dir(&prefix).await?;
            self.known_dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(prefix.clone());
        }
        Ok(())
    }
}

impl oio::Write for RemoteWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.parts.extend(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        // The parts stay: the retry layer calls close again after a failed publish.
        let size: usize = self.parts.iter().map(Bytes::len).sum();
        let data = match self.parts.as_slice() {
            [one] => one.clone(),
            parts => Bytes::from(parts.concat()),
        };
        if let Some((parent, _)) = self.path.rsplit_once('/') {
            self.ensure_dir(parent).await?;
        }
        self.ensure_dir(TEMP_DIR).await?;
        let temp = format!("{TEMP_DIR}/{}", uuid::Uuid::new_v4());
        let published = match self.fs.write_new(&temp, data).await {
            Ok(()) => self.fs.rename(&temp, &self.path, self.replace).await,
            Err(e) => Err(e),
        };
        if !matches!(published, Ok(true)) {
            // Best effort: gc removes what is left in `.tmp/` later.
            let _ = self.fs.remove(&temp).await;
        }
        if !published? {
            return Err(Error::new(ErrorKind::ConditionNotMatch, "the object exists already"));
        }
        Ok(MetadataBuilder::file(size as u64).build())
    }

    async fn abort(&mut self) -> Result<()> {
        self.parts.clear();
        Ok(())
    }
}

struct RemoteDeleter {
    fs: Arc<dyn RemoteFs>,
}

impl oio::OneShotDelete for RemoteDeleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        self.fs.remove(object_path(&path)?).await
    }
}

/// Walks the whole tree under `dir` at the first `next` (object names, not directories;
/// `.tmp/` left out). A missing `dir` lists as empty.
struct RemoteLister {
    fs: Arc<dyn RemoteFs>,
    dir: String,
    entries: Option<VecDeque<oio::Entry>>,
}

impl RemoteLister {
    async fn walk(&self) -> Result<VecDeque<oio::Entry>> {
        let mut found = VecDeque::new();
        let mut pending = vec![self.dir.clone()];
        while let Some(dir) = pending.pop() {
            let entries = match self.fs.read_dir(&dir).await {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                other => other?,
            };
            for entry in entries {
                let path = if dir.is_empty() { entry.name.clone() } else { format!("{dir}/{}", entry.name) };
                if entry.is_dir {
                    if path != TEMP_DIR {
                        pending.push(path);
                    }
                } else {
                    found.push_back(oio::Entry::new(&path, file_metadata(&entry)));
                }
            }
        }
        Ok(found)
    }
}

impl oio::List for RemoteLister {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        if self.entries.is_none() {
            self.entries = Some(self.walk().await?);
        }
        Ok(self.entries.as_mut().and_then(VecDeque::pop_front))
    }
}
