//! Where repository objects live: a local directory (also NFS/SMB mounts), an S3-compatible
//! bucket or an Azure Blob container, all behind one small API on an OpenDAL operator.
//!
//! Paths are relative and `/`-separated (`packs/ab/ab12…`). Every write publishes a whole
//! object or nothing: object stores are atomic per object, and on a file system we write to
//! a temporary file and rename it, so a crash never leaves a half-written object visible.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use opendal::layers::{ConcurrentLimitLayer, RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator, services};

/// Temporary files of atomic writes on a file system; never listed as objects.
const FS_TEMP_DIR: &str = ".tmp";

/// Where and how to connect. Fields left `None` fall back to the usual environment
/// variables (see [`open`]).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<String>,
    /// `bucket.host` addressing (AWS); the default path style (`host/bucket`) is what
    /// self-hosted S3 servers expect.
    pub s3_virtual_host_style: bool,
    pub azure_account: Option<String>,
    pub azure_key: Option<String>,
    pub azure_endpoint: Option<String>,
    /// Requests in flight at once against this backend.
    pub max_concurrency: usize,
    /// Retries of a failed request (network errors, 5xx, throttling) with exponential backoff.
    pub retries: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_region: None,
            s3_access_key: None,
            s3_secret_key: None,
            s3_virtual_host_style: false,
            azure_account: None,
            azure_key: None,
            azure_endpoint: None,
            max_concurrency: 16,
            retries: 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Fs,
    S3,
    Azblob,
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
    #[error("{location}: {operation} {path}: {source}")]
    // Boxed: opendal::Error is large and every Result of this module carries the variant.
    Other {
        location: String,
        operation: &'static str,
        path: String,
        source: Box<opendal::Error>,
    },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// A repository location with retries, timeouts and bounded concurrency applied.
#[derive(Clone, Debug)]
pub struct Backend {
    op: Operator,
    kind: BackendKind,
    location: String,
    /// Root directory of a file-system backend, for the writes OpenDAL cannot make atomic.
    fs_root: Option<PathBuf>,
}

/// Opens a repository location:
/// - a local path (or `file:///path`): also NFS and SMB mounts;
/// - `s3://bucket/prefix`: endpoint, region and keys from `opts`, else `AWS_ENDPOINT_URL`
///   (or `AWS_ENDPOINT_URL_S3`), `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`,
///   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, then the AWS config files;
/// - `azblob://container/prefix`: account, key and endpoint from `opts`, else
///   `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY`,
///   `AZURE_STORAGE_SAS_TOKEN`, `AZURE_STORAGE_ENDPOINT`.
///
/// Nothing is contacted yet: the first request reports unreachable servers or bad keys.
pub fn open(url: &str, opts: &BackendOptions) -> Result<Backend> {
    // Installs the reqwest HTTP transport OpenDAL's HTTP services need (idempotent).
    opendal::install_default();
    let invalid = |reason: &str| BackendError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let location = url.to_string();
    let config_error = |e: opendal::Error| BackendError::Config {
        location: location.clone(),
        message: e.to_string(),
    };

    let (kind, op, fs_root) = if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = split_bucket(rest).ok_or_else(|| invalid("expected s3://bucket[/prefix]"))?;
        (
            BackendKind::S3,
            s3_operator(bucket, prefix, opts).map_err(config_error)?,
            None,
        )
    } else if let Some(rest) = url.strip_prefix("azblob://") {
        let (container, prefix) = split_bucket(rest).ok_or_else(|| invalid("expected azblob://container[/prefix]"))?;
        (
            BackendKind::Azblob,
            azblob_operator(container, prefix, opts).map_err(config_error)?,
            None,
        )
    } else if url.contains("://") && !url.starts_with("file://") {
        return Err(invalid("supported: a local path, file://, s3://, azblob://"));
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() {
            return Err(invalid("empty path"));
        }
        let root = std::path::absolute(path).map_err(|e| invalid(&e.to_string()))?;
        let root_str = root.to_str().ok_or_else(|| invalid("path is not UTF-8"))?;
        let temp_dir = root.join(FS_TEMP_DIR);
        let builder = services::Fs::default()
            .root(root_str)
            .atomic_write_dir(temp_dir.to_str().unwrap_or(root_str));
        let op = Operator::new(builder).map_err(|e| classify(&location, "open", "", e))?;
        (BackendKind::Fs, op, Some(root))
    };

    let op = match kind {
        // A local disk gains nothing from retries: a full disk must fail at once.
        BackendKind::Fs => op.layer(ConcurrentLimitLayer::new(opts.max_concurrency.max(1))),
        BackendKind::S3 | BackendKind::Azblob => op
            // io_timeout bounds each read/write step, so a lost connection surfaces as a
            // retryable error instead of a hang; generous enough for 64 MiB objects.
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(60)),
            )
            .layer(ConcurrentLimitLayer::new(opts.max_concurrency.max(1)))
            .layer(
                RetryLayer::new()
                    .with_max_times(opts.retries)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(20))
                    .with_jitter(),
            ),
    };
    Ok(Backend {
        op,
        kind,
        location,
        fs_root,
    })
}

/// `bucket/some/prefix` → (`bucket`, `some/prefix`).
fn split_bucket(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, prefix.trim_matches('/')))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn object_root(prefix: &str) -> String {
    format!("/{prefix}")
}

fn s3_operator(bucket: &str, prefix: &str, opts: &BackendOptions) -> opendal::Result<Operator> {
    let mut builder = services::S3::default().bucket(bucket).root(&object_root(prefix));
    let endpoint = opts
        .s3_endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"));
    if let Some(endpoint) = &endpoint {
        // A custom endpoint is not AWS: asking EC2 metadata for keys would only add timeouts.
        builder = builder.endpoint(endpoint).disable_ec2_metadata();
    }
    let region = opts
        .s3_region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder.region(&region);
    if let Some(key) = opts.s3_access_key.clone().or_else(|| env("AWS_ACCESS_KEY_ID")) {
        builder = builder.access_key_id(&key);
    }
    if let Some(secret) = opts.s3_secret_key.clone().or_else(|| env("AWS_SECRET_ACCESS_KEY")) {
        builder = builder.secret_access_key(&secret);
    }
    if let Some(token) = env("AWS_SESSION_TOKEN") {
        builder = builder.session_token(&token);
    }
    if opts.s3_virtual_host_style {
        builder = builder.enable_virtual_host_style();
    }
    Operator::new(builder)
}

fn azblob_operator(container: &str, prefix: &str, opts: &BackendOptions) -> opendal::Result<Operator> {
    let explicit_account = opts.azure_account.is_some() || opts.azure_key.is_some();
    let mut builder = match env("AZURE_STORAGE_CONNECTION_STRING") {
        Some(conn) if !explicit_account => services::Azblob::from_connection_string(&conn)?,
        _ => services::Azblob::default(),
    };
    builder = builder.container(container).root(&object_root(prefix));
    let account = opts.azure_account.clone().or_else(|| env("AZURE_STORAGE_ACCOUNT"));
    if let Some(account) = &account {
        builder = builder.account_name(account);
    }
    if let Some(key) = opts.azure_key.clone().or_else(|| env("AZURE_STORAGE_KEY")) {
        builder = builder.account_key(&key);
    }
    if let Some(sas) = env("AZURE_STORAGE_SAS_TOKEN") {
        builder = builder.sas_token(&sas);
    }
    let endpoint = opts
        .azure_endpoint
        .clone()
        .or_else(|| env("AZURE_STORAGE_ENDPOINT"))
        .or_else(|| account.as_ref().map(|a| format!("https://{a}.blob.core.windows.net")));
    if let Some(endpoint) = &endpoint {
        builder = builder.endpoint(endpoint);
    }
    Operator::new(builder)
}

impl Backend {
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The location as given to [`open`], for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn err(&self, operation: &'static str, path: &str, e: opendal::Error) -> BackendError {
        classify(&self.location, operation, path, e)
    }

    /// Stores `data` at `path`, replacing any previous object; readers see the old object
    /// or the new one, never a part.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        self.op
            .write(path, data)
            .await
            .map(drop)
            .map_err(|e| self.err("put", path, e))
    }

    /// Stores `data` only if nothing is at `path` yet; returns false when something was.
    /// Atomic on every backend (S3 `If-None-Match: *`, Azure conditional put, a hard link
    /// on a file system), so it can arbitrate between concurrent writers.
    pub async fn put_if_absent(&self, path: &str, data: Bytes) -> Result<bool> {
        if let Some(root) = &self.fs_root {
            let (root, owned_path) = (root.clone(), path.to_string());
            let created = tokio::task::spawn_blocking(move || fs_put_if_absent(&root, &owned_path, &data))
                .await
                .map_err(|e| BackendError::Other {
                    location: self.location.clone(),
                    operation: "put_if_absent",
                    path: path.to_string(),
                    source: Box::new(opendal::Error::new(ErrorKind::Unexpected, e.to_string())),
                })?;
            return created.map_err(|e| self.err("put_if_absent", path, io_error(e)));
        }
        match self.op.write_with(path, data).if_not_exists(true).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists) => Ok(false),
            Err(e) => Err(self.err("put_if_absent", path, e)),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Bytes> {
        let buffer = self.op.read(path).await.map_err(|e| self.err("get", path, e))?;
        Ok(buffer.to_bytes())
    }

    /// Bytes `range` of the object; fails if the object is shorter than `range.end`.
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let buffer = self
            .op
            .read_with(path)
            .range(range)
            .await
            .map_err(|e| self.err("get_range", path, e))?;
        Ok(buffer.to_bytes())
    }

    /// Size and modification time of one object.
    pub async fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let meta = self.op.stat(path).await.map_err(|e| self.err("stat", path, e))?;
        Ok(object_info(path.to_string(), &meta))
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        self.op.exists(path).await.map_err(|e| self.err("exists", path, e))
    }

    /// Every object under `prefix` (a directory such as `packs/`, or `""` for all),
    /// recursively. A missing prefix lists as empty.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
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
        let temp_prefix = format!("{FS_TEMP_DIR}/");
        Ok(entries
            .into_iter()
            .filter(|entry| entry.metadata().is_file() && !entry.path().starts_with(&temp_prefix))
            .map(|entry| {
                let (path, meta) = entry.into_parts();
                object_info(path, &meta)
            })
            .collect())
    }

    /// Removes `path`; removing a missing object is not an error.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.op.delete(path).await.map_err(|e| self.err("delete", path, e))
    }

    /// Removes many objects with batched requests where the backend has them.
    pub async fn delete_many(&self, paths: Vec<String>) -> Result<()> {
        self.op
            .delete_iter(paths)
            .await
            .map_err(|e| self.err("delete_many", "", e))
    }

    /// Whether [`Backend::put_retained`] can make objects immutable here. OpenDAL 0.59 sends
    /// no S3 object-lock headers (`x-amz-object-lock-*`) and has no bucket-configuration
    /// call, so this is false everywhere for now. A bucket with a *default* retention rule
    /// still locks every object we put.
    pub fn supports_object_lock(&self) -> bool {
        false
    }

    /// Stores an object that cannot be deleted or overwritten before `retain_until`
    /// (S3 object lock). Fails with [`BackendError::Unsupported`] where
    /// [`Backend::supports_object_lock`] is false, rather than storing it unprotected.
    pub async fn put_retained(&self, path: &str, _data: Bytes, retain_until: DateTime<Utc>) -> Result<()> {
        Err(BackendError::Unsupported {
            location: self.location.clone(),
            what: format!("object lock ({path} retained until {retain_until})"),
        })
    }
}

fn object_info(path: String, meta: &opendal::Metadata) -> ObjectInfo {
    ObjectInfo {
        path,
        size: meta.content_length(),
        modified: meta
            .last_modified()
            .map(|t| DateTime::<Utc>::from(std::time::SystemTime::from(t))),
    }
}

/// Writes a temporary file, then hard-links it into place: `link` fails if the target
/// exists, so exactly one of several concurrent writers wins, and the object appears whole.
fn fs_put_if_absent(root: &Path, path: &str, data: &[u8]) -> std::io::Result<bool> {
    use std::io::Write;
    let relative = Path::new(path);
    if path.is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad object path {path:?}"),
        ));
    }
    let target = root.join(relative);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temp_dir = root.join(FS_TEMP_DIR);
    std::fs::create_dir_all(&temp_dir)?;
    let temp = temp_dir.join(uuid::Uuid::new_v4().to_string());
    let result = (|| {
        let mut file = std::fs::File::create_new(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        match std::fs::hard_link(&temp, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    result
}

fn io_error(e: std::io::Error) -> opendal::Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unexpected,
    };
    opendal::Error::new(kind, e.kind().to_string()).set_source(e)
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
        ErrorKind::NotFound => BackendError::NotFound {
            location,
            path: path.to_string(),
        },
        ErrorKind::PermissionDenied => BackendError::AccessDenied {
            location,
            message: e.to_string(),
        },
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => BackendError::AlreadyExists {
            location,
            path: path.to_string(),
        },
        ErrorKind::ConfigInvalid => BackendError::Config {
            location,
            message: e.to_string(),
        },
        ErrorKind::Unsupported => BackendError::Unsupported {
            location,
            what: format!("{operation}: {message}"),
        },
        // The reqwest transport reports connection failures as "send http request" and
        // broken bodies as "read data from http response"; timeouts come from TimeoutLayer.
        ErrorKind::Unexpected
            if message.contains("http request") || message.contains("http response") || message.contains("timeout") =>
        {
            BackendError::Network {
                location,
                message: e.to_string(),
            }
        }
        _ => BackendError::Other {
            location,
            operation,
            path: path.to_string(),
            source: Box::new(e),
        },
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
