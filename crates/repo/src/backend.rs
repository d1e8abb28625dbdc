//! Where repository objects live: a local directory (also NFS/SMB mounts), an S3-compatible
//! bucket, an Azure Blob container or an NFS or SMB share reached without a mount, behind one trait, [`ObjectStore`], the repository
//! opens through. [`open`] builds the implementation for a location: an OpenDAL operator
//! with retries, timeouts, bounded concurrency and (in tests) injected faults, the same
//! layers for every kind of location.
//!
//! Paths are relative and `/`-separated (`packs/ab/ab12…`). Every write publishes a whole
//! object or nothing: object stores are atomic per object, and on a file system we write to
//! a temporary file and rename it (see [`crate::local`]), so a crash never leaves a
//! half-written object visible. On a file system objects are private to their owner: files
//! 0600, directories 0700.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use opendal::layers::{ConcurrentLimitLayer, RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, HttpTransporter, Operator, services};
use opendal_http_transport_reqwest::ReqwestTransport;
use reqsign_aws_v4::{Credential, DefaultCredentialProvider, StaticCredentialProvider};
use reqsign_core::ProvideCredentialChain;
use xenvault_tls::ServerTrust;

use crate::local;
use crate::nfs;
use crate::remote::RemoteFs;
use crate::s3_lock::{S3ObjectLock, S3Target};
use crate::smb;

/// Where and how to connect. The caller fills them (the CLI from its flags and the usual
/// environment variables, a service from its settings): the library reads no environment.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub s3_endpoint: Option<String>,
    /// `us-east-1` when `None`.
    pub s3_region: Option<String>,
    /// With `s3_secret_key`: static keys tried before the credential chain (see [`open`]).
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<String>,
    pub s3_session_token: Option<String>,
    /// `bucket.host` addressing (AWS); the default path style (`host/bucket`) is what
    /// self-hosted S3 servers expect.
    pub s3_virtual_host_style: bool,
    pub azure_account: Option<String>,
    pub azure_key: Option<String>,
    pub azure_sas_token: Option<String>,
    /// Used when neither an account nor a key is given.
    pub azure_connection_string: Option<String>,
    pub azure_endpoint: Option<String>,
    /// `smb://` login: the user (when the URL names none), the password (or a file whose
    /// first line is the password) and the domain (workgroup) of the account, if any.
    pub smb_user: Option<String>,
    pub smb_password: Option<String>,
    pub smb_password_file: Option<PathBuf>,
    pub smb_domain: Option<String>,
    /// Where this host caches the repository's immutable objects (one SQLite file per
    /// repository, see [`crate::cache`]); `None`: no cache, every read goes to the store.
    pub cache_dir: Option<PathBuf>,
    /// Which server certificates HTTPS endpoints (S3, Azure) must present: the system's
    /// CAs by default, or a CA file or a SHA-256 pin as for pools.
    pub tls: ServerTrust,
    /// Requests in flight at once against this backend.
    pub max_concurrency: usize,
    /// Retries of a failed request (network errors, 5xx, throttling) with exponential backoff.
    pub retries: usize,
    /// Tests: storage faults injected under the retry layer (see [`crate::faults`]).
    pub faults: Option<Arc<crate::faults::Faults>>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_region: None,
            s3_access_key: None,
            s3_secret_key: None,
            s3_session_token: None,
            s3_virtual_host_style: false,
            azure_account: None,
            azure_key: None,
            azure_sas_token: None,
            azure_connection_string: None,
            azure_endpoint: None,
            smb_user: None,
            smb_password: None,
            smb_password_file: None,
            smb_domain: None,
            cache_dir: None,
            tls: ServerTrust::SystemRoots,
            max_concurrency: 16,
            retries: 6,
            faults: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Fs,
    S3,
    Azblob,
    /// `memory://name`: process-local, for tests; it behaves like an object store.
    Memory,
    /// `nfs://host/export/path` through a userspace NFSv4.1 client (see [`crate::nfs`]).
    Nfs,
    /// `smb://host/share/path` through a userspace SMB2/3 client (see [`crate::smb`]).
    Smb,
}

/// One stored object as seen by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the repository root, like the paths given to `put`.
    pub path: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid repository location {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{location}: invalid configuration: {message}")]
    Config { location: String, message: String },
    #[error("{location}: the bucket or container does not exist")]
    NoSuchBucket { location: String },
    #[error("{location}: access refused (check credentials and permissions): {message}")]
    AccessDenied { location: String, message: String },
    #[error("{location}: {path} not found")]
    NotFound { location: String, path: String },
    #[error("{location}: {path} already exists")]
    AlreadyExists { location: String, path: String },
    #[error("{location}: no space left on the device")]
    DiskFull { location: String },
    #[error("{location}: network error after retries: {message}")]
    Network { location: String, message: String },
    #[error("{location}: {what} is not supported by this backend")]
    Unsupported { location: String, what: String },
    #[error("{location}: the bucket has no object lock (it can only be enabled when the bucket is created)")]
    ObjectLockDisabled { location: String },
    #[error("{location}: {operation} {path}: S3 answered {status} {code}: {message}")]
    S3 { location: String, operation: &'static str, path: String, status: u16, code: String, message: String },
    #[error("{location}: {operation}: malformed answer: {message}")]
    MalformedReply { location: String, operation: &'static str, message: String },
    #[error("{location}: {operation} {path}: {source}")]
    // Boxed: opendal::Error is large and every Result of this module carries the variant.
    Other { location: String, operation: &'static str, path: String, source: Box<opendal::Error> },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// What the repository needs from storage: whole immutable objects by name. [`open`] gives
/// the implementation for a location; tests may wrap it or bring their own and open a
/// repository on it ([`crate::Repository::open_on`]).
///
/// Methods return boxed futures so the trait can be used as `dyn ObjectStore`.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// The location, for messages.
    fn location(&self) -> &str;

    /// Stores `data` at `path`, replacing any previous object; readers see the old object
    /// or the new one, never a part.
    fn put<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>>;

    /// Stores `data` only if nothing is at `path` yet; returns false when something was.
    /// Atomic, so it can arbitrate between concurrent writers.
    fn put_if_absent<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<bool>>;

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>>;

    /// Bytes `range` of the object; fails if the object is shorter than `range.end`.
    fn get_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>>;

    /// Size and modification time of one object.
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<ObjectInfo>>;

    fn exists<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.stat(path).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// Every object under `prefix` (a directory such as `packs/`, or `""` for all),
    /// recursively. A missing prefix lists as empty.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>>;

    /// Removes `path`; removing a missing object is not an error.
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Removes many objects, with batched requests where the store has them.
    fn delete_many(&self, paths: Vec<String>) -> BoxFuture<'_, Result<()>>;

    /// Removes temporary files of interrupted writes older than `age`; returns how many.
    /// Object stores have none.
    fn remove_temp_files(&self, _age: Duration) -> BoxFuture<'_, Result<usize>> {
        Box::pin(async { Ok(0) })
    }

    /// Whether objects here can be made immutable with [`ObjectStore::retain`]: an S3
    /// bucket created with object lock. False elsewhere.
    fn supports_object_lock(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(false) })
    }

    /// Fails with a message saying why objects cannot be locked here, if they cannot.
    fn require_object_lock(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.supports_object_lock().await? {
                Ok(())
            } else if self.kind() == BackendKind::S3 {
                Err(BackendError::ObjectLockDisabled { location: self.location().to_string() })
            } else {
                Err(self.object_lock_unsupported())
            }
        })
    }

    /// Protects the current version of the existing object `path` from deletion and
    /// overwrite until `until` (S3 `PUT ?retention`). Retention can be extended, never
    /// shortened in compliance mode. Fails with [`BackendError::ObjectLockDisabled`] on a
    /// bucket without object lock and [`BackendError::Unsupported`] off S3.
    fn retain<'a>(&'a self, _path: &'a str, _mode: RetentionMode, _until: DateTime<Utc>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Err(self.object_lock_unsupported()) })
    }

    /// The retention of the current version of `path`, or `None` when it has none.
    fn retention<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, Result<Option<ObjectRetention>>> {
        Box::pin(async move { Err(self.object_lock_unsupported()) })
    }

    /// The error of object-lock calls where there is no object lock.
    fn object_lock_unsupported(&self) -> BackendError {
        BackendError::Unsupported {
            location: self.location().to_string(),
            what: match self.kind() {
                BackendKind::Azblob => "object lock (Azure immutability policies are not supported yet)".to_string(),
                _ => "object lock (only S3 buckets with object lock have it)".to_string(),
            },
        }
    }
}

/// A repository location on an OpenDAL operator with retries, timeouts and bounded
/// concurrency applied.
#[derive(Clone, Debug)]
pub struct Backend {
    op: Operator,
    kind: BackendKind,
    location: String,
    /// Root directory of a file-system backend, for its temporary files.
    fs_root: Option<PathBuf>,
    /// Object lock, on S3 only: signed like the operator's requests, on its transport.
    object_lock: Option<Arc<S3ObjectLock>>,
    /// The client of an NFS or SMB location, for its temporary files.
    remote: Option<Arc<dyn RemoteFs>>,
}

/// Opens a repository location:
/// - a local path (or `file:///path`): also NFS and SMB mounts;
/// - `s3://bucket/prefix`: endpoint, region and keys from `opts`, then OpenDAL's (reqsign's)
///   credential chain: its own look at the AWS environment, the config and credential
///   files, SSO, web identity and, on AWS only, the instance's role;
/// - `azblob://container/prefix`: account, key, SAS token or connection string and
///   endpoint from `opts`;
/// - `nfs://host[:port]/export/path`: NFSv4.1 without a mount, as this process's uid/gid;
/// - `smb://[user@]host[:port]/share/path`: SMB2/3 without a mount, password from `opts`.
///
/// Nothing is contacted yet: the first request reports unreachable servers or bad keys.
pub fn open(url: &str, opts: &BackendOptions) -> Result<Backend> {
    // Registers OpenDAL's services and default HTTP transport (idempotent).
    opendal::install_default();
    let invalid = |reason: &str| BackendError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
    let location = url.to_string();
    let config_error = |message: String| BackendError::Config { location: location.clone(), message };

    let mut object_lock = None;
    let mut remote: Option<Arc<dyn RemoteFs>> = None;
    let (kind, op, fs_root) = if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = split_bucket(rest).ok_or_else(|| invalid("expected s3://bucket[/prefix]"))?;
        let transport = http_transport(&opts.tls).map_err(config_error)?;
        let (op, lock) = s3_backend(bucket, prefix, opts, transport).map_err(config_error)?;
        object_lock = Some(Arc::new(lock));
        (BackendKind::S3, op, None)
    } else if let Some(rest) = url.strip_prefix("azblob://") {
        let (container, prefix) = split_bucket(rest).ok_or_else(|| invalid("expected azblob://container[/prefix]"))?;
        let transport = http_transport(&opts.tls).map_err(config_error)?;
        let op = azblob_operator(container, prefix, opts).map_err(|e| config_error(e.to_string()))?;
        (BackendKind::Azblob, with_transport(op, transport), None)
    } else if let Some(name) = url.strip_prefix("memory://") {
        (BackendKind::Memory, memory_operator(name).map_err(|e| config_error(e.to_string()))?, None)
    } else if let Some(rest) = url.strip_prefix("nfs://") {
        let fs: Arc<dyn RemoteFs> = Arc::new(nfs::NfsFs::new(nfs::parse(rest).map_err(invalid)?));
        remote = Some(fs.clone());
        (BackendKind::Nfs, crate::remote::operator("nfs", url, fs), None)
    } else if let Some(rest) = url.strip_prefix("smb://") {
        let login = smb::SmbLogin {
            user: opts.smb_user.clone(),
            password: opts.smb_password.clone(),
            password_file: opts.smb_password_file.clone(),
            domain: opts.smb_domain.clone(),
        };
        let fs: Arc<dyn RemoteFs> = Arc::new(smb::SmbFs::new(smb::parse(rest).map_err(invalid)?, login));
        remote = Some(fs.clone());
        (BackendKind::Smb, crate::remote::operator("smb", url, fs), None)
    } else if url.contains("://") && !url.starts_with("file://") {
        return Err(invalid("supported: a local path, file://, s3://, azblob://, nfs://, smb://"));
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() {
            return Err(invalid("empty path"));
        }
        let root = std::path::absolute(path).map_err(|e| invalid(&e.to_string()))?;
        if root.to_str().is_none() {
            return Err(invalid("path is not UTF-8"));
        }
        let op = local::operator(&root).map_err(|e| classify(&location, "open", "", e))?;
        (BackendKind::Fs, op, Some(root))
    };

    // Innermost: injected faults meet the timeouts and retries real ones would.
    let op = match &opts.faults {
        Some(faults) => op.layer(crate::faults::FaultLayer(faults.clone())),
        None => op,
    };
    let op = match kind {
        // A local disk gains nothing from retries: a full disk must fail at once.
        BackendKind::Fs => op.layer(ConcurrentLimitLayer::new(opts.max_concurrency.max(1))),
        BackendKind::S3 | BackendKind::Azblob | BackendKind::Memory | BackendKind::Nfs | BackendKind::Smb => op
            // io_timeout bounds each read/write step, so a lost connection surfaces as a
            // retryable error instead of a hang; generous enough for 64 MiB objects.
            .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(120)).with_io_timeout(Duration::from_secs(60)))
            .layer(ConcurrentLimitLayer::new(opts.max_concurrency.max(1)))
            .layer(
                RetryLayer::new()
                    .with_max_times(opts.retries)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(20))
                    .with_jitter()
                    .with_notify(log_retry),
            ),
    };
    Ok(Backend { op, kind, location, fs_root, object_lock, remote })
}

/// One line per retry: the default logger prints the error's Debug form, which carries a
/// backtrace when RUST_BACKTRACE is set.
fn log_retry(event: opendal::layers::RetryEvent<'_>) {
    tracing::warn!(
        "{} failed, retry {} in {:.1}s: {}",
        event.op,
        event.attempt,
        event.retry_after.as_secs_f64(),
        event.err.to_string().replace('\n', " ")
    );
}

/// The HTTP transport of S3 and Azure locations: reqwest with rustls configured by
/// `xenvault_tls`, like every other TLS client of the product. The one of the system's
/// CAs is built once per process (loading the system's certificates is not free) and
/// shares its connection pool.
fn http_transport(trust: &ServerTrust) -> std::result::Result<HttpTransporter, String> {
    static SYSTEM_ROOTS: std::sync::OnceLock<std::result::Result<HttpTransporter, String>> = std::sync::OnceLock::new();
    let build = |trust: &ServerTrust| {
        let tls = xenvault_tls::client_config(trust).map_err(|e| format!("TLS: {e}"))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpTransporter::new(ReqwestTransport::new(client)))
    };
    match trust {
        ServerTrust::SystemRoots => SYSTEM_ROOTS.get_or_init(|| build(trust)).clone(),
        _ => build(trust),
    }
}

fn with_transport(op: Operator, transport: HttpTransporter) -> Operator {
    let context = op.base_context().with_http_transport(transport);
    op.with_context(context)
}

/// The in-memory store called `name`, shared by every open in this process.
fn memory_operator(name: &str) -> opendal::Result<Operator> {
    static STORES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Operator>>> =
        std::sync::OnceLock::new();
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(op) = stores.get(name) {
        return Ok(op.clone());
    }
    let op = Operator::new(services::Memory::default())?;
    stores.insert(name.to_string(), op.clone());
    Ok(op)
}

/// `bucket/some/prefix` → (`bucket`, `some/prefix`).
fn split_bucket(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, prefix.trim_matches('/')))
}

fn object_root(prefix: &str) -> String {
    format!("/{prefix}")
}

/// The operator and the object-lock client of an S3 location: one transport, one
/// credential chain.
fn s3_backend(
    bucket: &str,
    prefix: &str,
    opts: &BackendOptions,
    transport: HttpTransporter,
) -> std::result::Result<(Operator, S3ObjectLock), String> {
    let region = opts.s3_region.clone().unwrap_or_else(|| "us-east-1".to_string());
    let custom_endpoint = opts.s3_endpoint.clone();
    let credentials = Arc::new(s3_credentials(opts, custom_endpoint.is_some()));

    let mut builder = services::S3::default()
        .bucket(bucket)
        .root(&object_root(prefix))
        .region(&region)
        .credential_provider_chain(ProvideCredentialChain::new().push(credentials.clone()));
    if let Some(endpoint) = &custom_endpoint {
        builder = builder.endpoint(endpoint);
    }
    if opts.s3_virtual_host_style {
        builder = builder.enable_virtual_host_style();
    }
    let op = Operator::new(builder).map_err(|e| e.to_string())?;

    let endpoint = custom_endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let target = S3Target {
        endpoint: &endpoint,
        region: &region,
        bucket,
        prefix,
        virtual_host_style: opts.s3_virtual_host_style,
        retries: opts.retries,
    };
    let lock = S3ObjectLock::new(&target, credentials, transport.clone())?;
    Ok((with_transport(op, transport), lock))
}

/// The credential chain OpenDAL builds by default (environment, profile files, SSO, web
/// identity, ECS, instance metadata), behind keys given in `opts` as a pair. A custom endpoint is not AWS: asking EC2 metadata for keys would only add
/// timeouts.
fn s3_credentials(opts: &BackendOptions, custom_endpoint: bool) -> ProvideCredentialChain<Credential> {
    let mut default = DefaultCredentialProvider::builder();
    if custom_endpoint {
        default = default.no_imds();
    }
    let chain = ProvideCredentialChain::new().push(default.build());
    match opts.s3_access_key.as_ref().zip(opts.s3_secret_key.as_ref()) {
        Some((key, secret)) => {
            let keys = StaticCredentialProvider::new(key, secret);
            chain.push_front(match &opts.s3_session_token {
                Some(token) => keys.with_session_token(token),
                None => keys,
            })
        }
        None => chain,
    }
}

fn azblob_operator(container: &str, prefix: &str, opts: &BackendOptions) -> opendal::Result<Operator> {
    let explicit_account = opts.azure_account.is_some() || opts.azure_key.is_some();
    let mut builder = match &opts.azure_connection_string {
        Some(conn) if !explicit_account => services::Azblob::from_connection_string(conn)?,
        _ => services::Azblob::default(),
    };
    builder = builder.container(container).root(&object_root(prefix));
    let account = &opts.azure_account;
    if let Some(account) = account {
        builder = builder.account_name(account);
    }
    if let Some(key) = &opts.azure_key {
        builder = builder.account_key(key);
    }
    if let Some(sas) = &opts.azure_sas_token {
        builder = builder.sas_token(sas);
    }
    let endpoint =
        opts.azure_endpoint.clone().or_else(|| account.as_ref().map(|a| format!("https://{a}.blob.core.windows.net")));
    if let Some(endpoint) = &endpoint {
        builder = builder.endpoint(endpoint);
    }
    Operator::new(builder)
}

impl Backend {
    fn err(&self, operation: &'static str, path: &str, e: opendal::Error) -> BackendError {
        classify(&self.location, operation, path, e)
    }
}

impl ObjectStore for Backend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn put<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.op.write(path, data).await.map(drop).map_err(|e| self.err("put", path, e)) })
    }

    /// S3 `If-None-Match: *`, Azure conditional put, a hard link on a file system.
    fn put_if_absent<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.op.write_with(path, data).if_not_exists(true).await {
                Ok(_) => Ok(true),
                Err(e) if matches!(e.kind(), ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists) => Ok(false),
                Err(e) => Err(self.err("put_if_absent", path, e)),
            }
        })
    }

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let buffer = self.op.read(path).await.map_err(|e| self.err("get", path, e))?;
            Ok(buffer.to_bytes())
        })
    }

    fn get_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let buffer = self.op.read_with(path).range(range).await.map_err(|e| self.err("get_range", path, e))?;
            Ok(buffer.to_bytes())
        })
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<ObjectInfo>> {
        Box::pin(async move {
            let meta = self.op.stat(path).await.map_err(|e| self.err("stat", path, e))?;
            Ok(object_info(path.to_string(), &meta))
        })
    }

    fn exists<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.op.exists(path).await.map_err(|e| self.err("exists", path, e)) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>> {
        Box::pin(async move {
            let dir = match prefix.trim_start_matches('/') {
                "" => String::new(),
                p if p.ends_with('/') => p.to_string(),
                p => format!("{p}/"),
            };
            let entries = match self.op.list_with(&dir).recursive(true).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound && self.kind == BackendKind::Fs => return Ok(Vec::new()),
                Err(e) => return Err(self.err("list", &dir, e)),
            };
            let temp_prefix = format!("{}/", local::TEMP_DIR);
            Ok(entries
                .into_iter()
                .filter(|entry| entry.metadata().is_file() && !entry.path().starts_with(&temp_prefix))
                .map(|entry| {
                    let (path, meta) = entry.into_parts();
                    object_info(path, &meta)
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.op.delete(path).await.map_err(|e| self.err("delete", path, e)) })
    }

    fn delete_many(&self, paths: Vec<String>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.op.delete_iter(paths).await.map_err(|e| self.err("delete_many", "", e)) })
    }

    /// A file system's or a file server's `.tmp/`.
    fn remove_temp_files(&self, age: Duration) -> BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            if let Some(remote) = &self.remote {
                let removed = crate::remote::remove_old_temp_files(remote.as_ref(), age).await;
                return removed.map_err(|e| self.err("remove_temp_files", local::TEMP_DIR, e));
            }
            let Some(root) = self.fs_root.clone() else { return Ok(0) };
            let operation = "remove_temp_files";
            let removed =
                tokio::task::spawn_blocking(move || local::remove_old_temp_files(&root, age)).await.map_err(|e| {
                    self.err(operation, local::TEMP_DIR, opendal::Error::new(ErrorKind::Unexpected, e.to_string()))
                })?;
            removed.map_err(|e| self.err(operation, local::TEMP_DIR, local::io_error(e)))
        })
    }

    /// Asked with `GET ?object-lock`; a server without the call counts as false.
    fn supports_object_lock(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match &self.object_lock {
                Some(lock) => lock.enabled(&self.location).await,
                None => Ok(false),
            }
        })
    }

    fn retain<'a>(&'a self, path: &'a str, mode: RetentionMode, until: DateTime<Utc>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let lock = self.object_lock.as_ref().ok_or_else(|| self.object_lock_unsupported())?;
            if until <= Utc::now() {
                return Err(BackendError::Config {
                    location: self.location.clone(),
                    message: format!("retention date {until} is not in the future"),
                });
            }
            lock.retain(&self.location, path, mode, until).await
        })
    }

    fn retention<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectRetention>>> {
        Box::pin(async move {
            let lock = self.object_lock.as_ref().ok_or_else(|| self.object_lock_unsupported())?;
            lock.retention(&self.location, path).await
        })
    }
}

/// How S3 object lock protects a version: governance can be lifted by users with
/// `s3:BypassGovernanceRetention`, compliance by nobody until the date passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    Governance,
    Compliance,
}

impl RetentionMode {
    pub(crate) fn s3_name(self) -> &'static str {
        match self {
            RetentionMode::Governance => "GOVERNANCE",
            RetentionMode::Compliance => "COMPLIANCE",
        }
    }
}

impl std::fmt::Display for RetentionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RetentionMode::Governance => "governance",
            RetentionMode::Compliance => "compliance",
        })
    }
}

impl std::str::FromStr for RetentionMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(RetentionMode::Governance),
            "compliance" => Ok(RetentionMode::Compliance),
            _ => Err(format!("unknown retention mode {s:?} (governance or compliance)")),
        }
    }
}

/// The retention an object version carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRetention {
    pub mode: RetentionMode,
    pub until: DateTime<Utc>,
}

fn object_info(path: String, meta: &opendal::Metadata) -> ObjectInfo {
    ObjectInfo {
        path,
        size: meta.content_length(),
        modified: meta.last_modified().map(|t| DateTime::<Utc>::from(std::time::SystemTime::from(t))),
    }
}

/// Turns an OpenDAL error into the few cases a user can act on.
fn classify(location: &str, operation: &'static str, path: &str, e: opendal::Error) -> BackendError {
    let location = location.to_string();
    let message = e.message();
    // S3 says NoSuchBucket, Azure ContainerNotFound; both inside the service's message.
    if message.contains("NoSuchBucket") || message.contains("ContainerNotFound") {
        return BackendError::NoSuchBucket { location };
    }
    if io_source_kind(&e)
        .is_some_and(|k| matches!(k, std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    {
        return BackendError::DiskFull { location };
    }
    match e.kind() {
        ErrorKind::NotFound => BackendError::NotFound { location, path: path.to_string() },
        ErrorKind::PermissionDenied => BackendError::AccessDenied { location, message: e.to_string() },
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => {
            BackendError::AlreadyExists { location, path: path.to_string() }
        }
        ErrorKind::ConfigInvalid => BackendError::Config { location, message: e.to_string() },
        ErrorKind::Unsupported => BackendError::Unsupported { location, what: format!("{operation}: {message}") },
        // The reqwest transport reports connection failures as "send http request" and
        // broken bodies as "read data from http response"; timeouts come from TimeoutLayer.
        ErrorKind::Unexpected
            if message.contains("http request")
                || message.contains("http response")
                || message.contains("timeout")
                || message.starts_with(crate::remote::NETWORK) =>
        {
            BackendError::Network { location, message: e.to_string() }
        }
        _ => BackendError::Other { location, operation, path: path.to_string(), source: Box::new(e) },
    }
}

fn io_source_kind(e: &opendal::Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}
