//! Where repository objects live: a local directory (also NFS/SMB mounts), an S3-compatible
//! bucket or an Azure Blob container, all behind one small API on an OpenDAL operator.
//!
//! Paths are relative and `/`-separated (`packs/ab/ab12…`). Every write publishes a whole
//! object or nothing: object stores are atomic per object, and on a file system we write to
//! a temporary file and rename it, so a crash never leaves a half-written object visible.
//! On a file system objects are private to their owner: files 0600, directories 0700.

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
    /// Tests: storage faults injected under the retry layer (see [`crate::faults`]).
    pub faults: Option<std::sync::Arc<crate::faults::Faults>>,
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

/// A repository location with retries, timeouts and bounded concurrency applied.
#[derive(Clone, Debug)]
pub struct Backend {
    op: Operator,
    kind: BackendKind,
    location: String,
    /// Root directory of a file-system backend, for the writes OpenDAL cannot make atomic.
    fs_root: Option<PathBuf>,
    /// Requests OpenDAL cannot make (object lock), on S3 only.
    s3: Option<std::sync::Arc<S3Control>>,
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
    let invalid = |reason: &str| BackendError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
    let location = url.to_string();
    let config_error = |e: opendal::Error| BackendError::Config { location: location.clone(), message: e.to_string() };

    let mut s3 = None;
    let (kind, op, fs_root) = if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = split_bucket(rest).ok_or_else(|| invalid("expected s3://bucket[/prefix]"))?;
        let control = s3_control(bucket, prefix, opts)
            .map_err(|message| BackendError::Config { location: location.clone(), message })?;
        s3 = Some(std::sync::Arc::new(control));
        (BackendKind::S3, s3_operator(bucket, prefix, opts).map_err(config_error)?, None)
    } else if let Some(rest) = url.strip_prefix("azblob://") {
        let (container, prefix) = split_bucket(rest).ok_or_else(|| invalid("expected azblob://container[/prefix]"))?;
        (BackendKind::Azblob, azblob_operator(container, prefix, opts).map_err(config_error)?, None)
    } else if let Some(name) = url.strip_prefix("memory://") {
        (BackendKind::Memory, memory_operator(name).map_err(config_error)?, None)
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
        // OpenDAL would create these with the umask's mode.
        create_private_dirs(&temp_dir).map_err(|e| classify(&location, "open", "", io_error(e)))?;
        let builder = services::Fs::default().root(root_str).atomic_write_dir(temp_dir.to_str().unwrap_or(root_str));
        let op = Operator::new(builder).map_err(|e| classify(&location, "open", "", e))?;
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
        BackendKind::S3 | BackendKind::Azblob | BackendKind::Memory => op
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
    Ok(Backend { op, kind, location, fs_root, s3 })
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

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn object_root(prefix: &str) -> String {
    format!("/{prefix}")
}

fn s3_endpoint(opts: &BackendOptions) -> Option<String> {
    opts.s3_endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL_S3")).or_else(|| env("AWS_ENDPOINT_URL"))
}

fn s3_region(opts: &BackendOptions) -> String {
    opts.s3_region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string())
}

fn s3_operator(bucket: &str, prefix: &str, opts: &BackendOptions) -> opendal::Result<Operator> {
    let mut builder = services::S3::default().bucket(bucket).root(&object_root(prefix));
    if let Some(endpoint) = &s3_endpoint(opts) {
        // A custom endpoint is not AWS: asking EC2 metadata for keys would only add timeouts.
        builder = builder.endpoint(endpoint).disable_ec2_metadata();
    }
    builder = builder.region(&s3_region(opts));
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
        if self.fs_root.is_some() {
            return self.fs_write(path, data, FsWrite::Replace).await.map(drop);
        }
        self.op.write(path, data).await.map(drop).map_err(|e| self.err("put", path, e))
    }

    /// Stores `data` only if nothing is at `path` yet; returns false when something was.
    /// Atomic on every backend (S3 `If-None-Match: *`, Azure conditional put, a hard link
    /// on a file system), so it can arbitrate between concurrent writers.
    pub async fn put_if_absent(&self, path: &str, data: Bytes) -> Result<bool> {
        if self.fs_root.is_some() {
            return self.fs_write(path, data, FsWrite::IfAbsent).await;
        }
        match self.op.write_with(path, data).if_not_exists(true).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists) => Ok(false),
            Err(e) => Err(self.err("put_if_absent", path, e)),
        }
    }

    /// Writes on a file system ourselves: OpenDAL creates files with the umask's mode.
    async fn fs_write(&self, path: &str, data: Bytes, how: FsWrite) -> Result<bool> {
        let operation = match how {
            FsWrite::Replace => "put",
            FsWrite::IfAbsent => "put_if_absent",
        };
        let (root, owned_path) = (self.fs_root.clone().unwrap_or_default(), path.to_string());
        let written =
            tokio::task::spawn_blocking(move || fs_write(&root, &owned_path, &data, how)).await.map_err(|e| {
                BackendError::Other {
                    location: self.location.clone(),
                    operation,
                    path: path.to_string(),
                    source: Box::new(opendal::Error::new(ErrorKind::Unexpected, e.to_string())),
                }
            })?;
        written.map_err(|e| self.err(operation, path, io_error(e)))
    }

    pub async fn get(&self, path: &str) -> Result<Bytes> {
        let buffer = self.op.read(path).await.map_err(|e| self.err("get", path, e))?;
        Ok(buffer.to_bytes())
    }

    /// Bytes `range` of the object; fails if the object is shorter than `range.end`.
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let buffer = self.op.read_with(path).range(range).await.map_err(|e| self.err("get_range", path, e))?;
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

    /// Removes temporary files of interrupted writes (a file system's `.tmp/`) older than
    /// `age`; returns how many. Object stores have none.
    pub async fn remove_temp_files(&self, age: Duration) -> Result<usize> {
        let Some(dir) = self.fs_root.as_ref().map(|root| root.join(FS_TEMP_DIR)) else { return Ok(0) };
        let unexpected =
            |e: String| self.err("remove_temp_files", FS_TEMP_DIR, opendal::Error::new(ErrorKind::Unexpected, e));
        let removed = tokio::task::spawn_blocking(move || remove_old_files(&dir, age))
            .await
            .map_err(|e| unexpected(e.to_string()))?;
        removed.map_err(|e| self.err("remove_temp_files", FS_TEMP_DIR, io_error(e)))
    }

    /// Removes many objects with batched requests where the backend has them.
    pub async fn delete_many(&self, paths: Vec<String>) -> Result<()> {
        self.op.delete_iter(paths).await.map_err(|e| self.err("delete_many", "", e))
    }

    /// Whether objects here can be made immutable with [`Backend::retain`]: an S3 bucket
    /// created with object lock (asked with `GET ?object-lock`). Always false on a file
    /// system and on Azure Blob. A server without the call (`NotImplemented`) counts as false.
    pub async fn supports_object_lock(&self) -> Result<bool> {
        let Some(s3) = &self.s3 else {
            return Ok(false);
        };
        let reply = s3.send(&self.location, reqwest::Method::GET, None, "object-lock", Bytes::new()).await?;
        match reply.status {
            200 => Ok(xml_field(&reply.body, "ObjectLockEnabled").as_deref() == Some("Enabled")),
            _ if reply.code == "ObjectLockConfigurationNotFoundError" || reply.code == "NotImplemented" => Ok(false),
            _ => Err(reply.into_error(&self.location, "get object-lock configuration", "")),
        }
    }

    /// Fails with a message saying why objects cannot be locked here, if they cannot.
    pub async fn require_object_lock(&self) -> Result<()> {
        self.s3_for("object lock")?;
        if self.supports_object_lock().await? {
            Ok(())
        } else {
            Err(BackendError::ObjectLockDisabled { location: self.location.clone() })
        }
    }

    /// Protects the current version of the existing object `path` from deletion and
    /// overwrite until `until` (S3 `PUT ?retention`). Retention can be extended, never
    /// shortened in compliance mode. Fails with [`BackendError::ObjectLockDisabled`] on a
    /// bucket without object lock and [`BackendError::Unsupported`] off S3.
    pub async fn retain(&self, path: &str, mode: RetentionMode, until: DateTime<Utc>) -> Result<()> {
        let s3 = self.s3_for("object lock")?;
        if until <= Utc::now() {
            return Err(BackendError::Config {
                location: self.location.clone(),
                message: format!("retention date {until} is not in the future"),
            });
        }
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.s3_name(),
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let reply = s3.send(&self.location, reqwest::Method::PUT, Some(path), "retention", Bytes::from(body)).await?;
        match reply.status {
            200..=299 => Ok(()),
            _ => Err(reply.into_error(&self.location, "put retention", path)),
        }
    }

    /// The retention of the current version of `path`, or `None` when it has none.
    pub async fn retention(&self, path: &str) -> Result<Option<ObjectRetention>> {
        let s3 = self.s3_for("object lock")?;
        let reply = s3.send(&self.location, reqwest::Method::GET, Some(path), "retention", Bytes::new()).await?;
        // AWS says NoSuchObjectLockConfiguration, SeaweedFS ObjectLockConfigurationNotFoundError.
        if reply.status == 404
            && matches!(reply.code.as_str(), "NoSuchObjectLockConfiguration" | "ObjectLockConfigurationNotFoundError")
        {
            return Ok(None);
        }
        if !(200..=299).contains(&reply.status) {
            return Err(reply.into_error(&self.location, "get retention", path));
        }
        let malformed = |what: &str| BackendError::MalformedReply {
            location: self.location.clone(),
            operation: "get retention",
            message: what.to_string(),
        };
        let mode = xml_field(&reply.body, "Mode").ok_or_else(|| malformed("no <Mode>"))?;
        let until = xml_field(&reply.body, "RetainUntilDate").ok_or_else(|| malformed("no <RetainUntilDate>"))?;
        Ok(Some(ObjectRetention {
            mode: mode.parse().map_err(|e: String| malformed(&e))?,
            until: DateTime::parse_from_rfc3339(&until)
                .map_err(|e| malformed(&format!("RetainUntilDate {until:?}: {e}")))?
                .with_timezone(&Utc),
        }))
    }

    fn s3_for(&self, what: &str) -> Result<&S3Control> {
        self.s3.as_deref().ok_or_else(|| BackendError::Unsupported {
            location: self.location.clone(),
            what: match self.kind {
                BackendKind::Azblob => format!("{what} (Azure immutability policies are not supported yet)"),
                _ => format!("{what} (only S3 buckets with object lock have it)"),
            },
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
    fn s3_name(self) -> &'static str {
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

/// Signed S3 requests for what OpenDAL 0.59 cannot send: the bucket's object-lock
/// configuration and per-object retention (AWS Signature Version 4).
struct S3Control {
    http: std::sync::OnceLock<std::result::Result<reqwest::Client, String>>,
    /// `scheme://host[:port]` of the bucket (the bucket is in the host in virtual-host style).
    base: reqwest::Url,
    /// `/bucket` in path style, empty in virtual-host style.
    bucket_path: String,
    /// The repository prefix inside the bucket, with a trailing `/` unless empty.
    root: String,
    region: String,
    credentials: Option<(String, String)>,
    session_token: Option<String>,
    retries: usize,
}

impl std::fmt::Debug for S3Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("S3Control")
            .field("base", &self.base.as_str())
            .field("bucket_path", &self.bucket_path)
            .field("root", &self.root)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Status, S3 error code and body of one answer.
struct S3Reply {
    status: u16,
    code: String,
    body: String,
}

impl S3Reply {
    fn into_error(self, location: &str, operation: &'static str, path: &str) -> BackendError {
        let location = location.to_string();
        let message = xml_field(&self.body, "Message").unwrap_or_default();
        match (self.status, self.code.as_str()) {
            (_, "NoSuchBucket") => BackendError::NoSuchBucket { location },
            (_, "NoSuchKey") | (404, "") => BackendError::NotFound { location, path: path.to_string() },
            (_, "InvalidRequest") if message.to_ascii_lowercase().contains("object lock") => {
                BackendError::ObjectLockDisabled { location }
            }
            (403, _) => {
                BackendError::AccessDenied { location, message: format!("{operation} {path}: {} {message}", self.code) }
            }
            (status, code) => BackendError::S3 {
                location,
                operation,
                path: path.to_string(),
                status,
                code: code.to_string(),
                message,
            },
        }
    }
}

fn s3_control(bucket: &str, prefix: &str, opts: &BackendOptions) -> std::result::Result<S3Control, String> {
    let region = s3_region(opts);
    let endpoint = s3_endpoint(opts).unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let mut base = reqwest::Url::parse(&endpoint).map_err(|e| format!("S3 endpoint {endpoint:?}: {e}"))?;
    let bucket_path = if opts.s3_virtual_host_style {
        let host = base.host_str().ok_or_else(|| format!("S3 endpoint {endpoint:?} has no host"))?;
        base.set_host(Some(&format!("{bucket}.{host}"))).map_err(|e| format!("S3 endpoint {endpoint:?}: {e}"))?;
        String::new()
    } else {
        format!("/{}", uri_encode(bucket))
    };
    base.set_path("");
    let access = opts.s3_access_key.clone().or_else(|| env("AWS_ACCESS_KEY_ID"));
    let secret = opts.s3_secret_key.clone().or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    Ok(S3Control {
        http: std::sync::OnceLock::new(),
        base,
        bucket_path,
        root: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
        region,
        credentials: access.zip(secret),
        session_token: env("AWS_SESSION_TOKEN"),
        retries: opts.retries,
    })
}

impl S3Control {
    fn client(&self) -> std::result::Result<&reqwest::Client, String> {
        self.http
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS configuration: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// One signed request on the bucket (`key` None) or on an object, with the
    /// sub-resource `subresource` (`object-lock`, `retention`); retries network errors,
    /// 5xx and throttling with exponential backoff.
    async fn send(
        &self,
        location: &str,
        method: reqwest::Method,
        key: Option<&str>,
        subresource: &str,
        body: Bytes,
    ) -> Result<S3Reply> {
        let client =
            self.client().map_err(|message| BackendError::Config { location: location.to_string(), message })?;
        let path = match key {
            Some(key) => format!("{}/{}", self.bucket_path, uri_encode(&format!("{}{key}", self.root))),
            None if self.bucket_path.is_empty() => "/".to_string(),
            None => self.bucket_path.clone(),
        };
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query(Some(subresource));
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            let request =
                self.sign(client.request(method.clone(), url.clone()), &method, &url, &path, subresource, &body);
            let outcome = match request.body(body.clone()).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.text().await {
                        Ok(text) => {
                            Ok(S3Reply { status, code: xml_field(&text, "Code").unwrap_or_default(), body: text })
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            let retryable = match &outcome {
                Ok(reply) => reply.status >= 500 || reply.status == 429 || reply.code == "SlowDown",
                Err(_) => true,
            };
            if !retryable || attempt >= self.retries {
                return outcome.map_err(|message| BackendError::Network {
                    location: location.to_string(),
                    message: format!("{method} ?{subresource}: {message}"),
                });
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(20));
        }
    }

    /// Adds the SigV4 headers (anonymous requests go unsigned).
    fn sign(
        &self,
        request: reqwest::RequestBuilder,
        method: &reqwest::Method,
        url: &reqwest::Url,
        path: &str,
        subresource: &str,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        use base64::Engine;
        use md5::Digest;
        let now = Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let day = now.format("%Y%m%d").to_string();
        let payload_hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        // Sorted by name, as the canonical request wants them.
        let mut headers: Vec<(&str, String)> = Vec::new();
        if !body.is_empty() {
            headers.push(("content-md5", base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))));
        }
        headers.push(("host", host));
        headers.push(("x-amz-content-sha256", payload_hash.clone()));
        headers.push(("x-amz-date", amz_date.clone()));
        if let Some(token) = &self.session_token {
            headers.push(("x-amz-security-token", token.clone()));
        }
        let mut request = request;
        for (name, value) in &headers {
            if *name != "host" {
                request = request.header(*name, value);
            }
        }
        let Some((access_key, secret_key)) = &self.credentials else {
            return request;
        };
        let signed_headers = headers.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(";");
        let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{}\n", v.trim())).collect();
        let canonical_request =
            format!("{method}\n{path}\n{subresource}=\n{canonical_headers}\n{signed_headers}\n{payload_hash}");
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, canonical_request.as_bytes()))
        );
        let hmac = |key: &[u8], data: &str| {
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data.as_bytes())
        };
        let mut key = hmac(format!("AWS4{secret_key}").as_bytes(), &day);
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac(key.as_ref(), part);
        }
        let signature = hex::encode(hmac(key.as_ref(), &string_to_sign));
        request.header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"),
        )
    }
}

/// SigV4 URI encoding of an object path: unreserved characters and `/` stay, the rest is `%XX`.
fn uri_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Text of the first element named `name` in an S3 XML document.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => inside = e.local_name().as_ref() == name.as_bytes(),
            Event::Text(text) if inside => return text.unescape().ok().map(|t| t.trim().to_string()),
            Event::End(_) => inside = false,
            Event::Eof => return None,
            _ => {}
        }
    }
}

fn object_info(path: String, meta: &opendal::Metadata) -> ObjectInfo {
    ObjectInfo {
        path,
        size: meta.content_length(),
        modified: meta.last_modified().map(|t| DateTime::<Utc>::from(std::time::SystemTime::from(t))),
    }
}

#[derive(Debug, Clone, Copy)]
enum FsWrite {
    /// Rename over any existing object.
    Replace,
    /// Hard-link into place: `link` fails if the target exists, so exactly one of several
    /// concurrent writers wins.
    IfAbsent,
}

/// Directories of a file-system repository (and the cache), created private (0700).
pub(crate) fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes a private (0600) temporary file, then moves it into place `how` says, so the
/// object appears whole or not at all. Returns false when `IfAbsent` found an object.
fn fs_write(root: &Path, path: &str, data: &[u8], how: FsWrite) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let relative = Path::new(path);
    if path.is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad object path {path:?}")));
    }
    let target = root.join(relative);
    if let Some(parent) = target.parent() {
        create_private_dirs(parent)?;
    }
    let temp_dir = root.join(FS_TEMP_DIR);
    create_private_dirs(&temp_dir)?;
    let temp = temp_dir.join(uuid::Uuid::new_v4().to_string());
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        match how {
            FsWrite::Replace => std::fs::rename(&temp, &target).map(|()| true),
            FsWrite::IfAbsent => match std::fs::hard_link(&temp, &target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
        }
    })();
    // After a rename the temporary name is gone already.
    let _ = std::fs::remove_file(&temp);
    result
}

/// Removes the files directly in `dir` last modified more than `age` ago.
fn remove_old_files(dir: &Path, age: Duration) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let old = meta.modified()?.elapsed().is_ok_and(|elapsed| elapsed >= age);
        if !meta.is_file() || !old {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
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
            if message.contains("http request") || message.contains("http response") || message.contains("timeout") =>
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
