//! A local directory (also NFS and SMB mounts) as an OpenDAL service, so it sits under the
//! same layers as the object stores (injected faults in tests, the concurrency limit).
//! OpenDAL's fs service reads, lists and deletes; writes are ours: OpenDAL creates files
//! with the umask's mode, and objects here are private (files 0600, directories 0700) and
//! published whole: a temporary file in `.tmp/`, synced, then renamed into place (or
//! hard-linked, for a create that must not replace), so a crash never leaves half an object.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opendal::raw::*;
use opendal::{Buffer, Capability, Error, ErrorKind, Metadata, MetadataBuilder, OperationContext, Operator, Result};

/// Temporary files of atomic writes; never listed as objects.
pub(crate) const TEMP_DIR: &str = ".tmp";

/// The operator of the directory `root` (created private if missing).
pub(crate) fn operator(root: &Path) -> Result<Operator> {
    let root_str = root.to_str().ok_or_else(|| Error::new(ErrorKind::ConfigInvalid, "path is not UTF-8"))?;
    // OpenDAL would create these with the umask's mode.
    create_private_dirs(&root.join(TEMP_DIR)).map_err(io_error)?;
    let fs = Operator::new(opendal::services::Fs::default().root(root_str))?;
    let service = LocalService { inner: fs.service().clone(), root: Arc::new(root.to_path_buf()) };
    Ok(Operator::from_parts(fs.context().clone(), Arc::new(service)))
}

/// Directories of a file-system repository (and the cache), created private (0700).
pub(crate) fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Removes the temporary files in `root`'s `.tmp/` last modified more than `age` ago.
pub(crate) fn remove_old_temp_files(root: &Path, age: Duration) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(root.join(TEMP_DIR)) {
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

pub(crate) fn io_error(e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, e.kind().to_string()).set_source(e)
}

struct LocalService {
    /// OpenDAL's fs service, for everything but writes.
    inner: Servicer,
    root: Arc<PathBuf>,
}

impl fmt::Debug for LocalService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalService").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Service for LocalService {
    type Reader = oio::Reader;
    type Writer = LocalWriter;
    type Lister = oio::Lister;
    type Deleter = oio::Deleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        self.inner.capability()
    }

    async fn create_dir(&self, ctx: &OperationContext, path: &str, args: OpCreateDir) -> Result<RpCreateDir> {
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        self.inner.read(ctx, path, args)
    }

    fn write(&self, _: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        let how = if args.if_not_exists() { Publish::IfAbsent } else { Publish::Replace };
        Ok(LocalWriter { root: self.root.clone(), path: path.to_string(), how, parts: Vec::new() })
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        self.inner.delete(ctx)
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        self.inner.list(ctx, path, args)
    }

    fn copy(&self, ctx: &OperationContext, from: &str, to: &str, args: OpCopy) -> Result<Self::Copier> {
        self.inner.copy(ctx, from, to, args)
    }

    fn compose(&self, ctx: &OperationContext, to: &str, args: OpCompose) -> Result<Self::Composer> {
        self.inner.compose(ctx, to, args)
    }

    async fn rename(&self, ctx: &OperationContext, from: &str, to: &str, args: OpRename) -> Result<RpRename> {
        self.inner.rename(ctx, from, to, args).await
    }

    async fn presign(&self, ctx: &OperationContext, path: &str, args: OpPresign) -> Result<RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

#[derive(Debug, Clone, Copy)]
enum Publish {
    /// Rename over any existing object.
    Replace,
    /// Hard-link into place: `link` fails if the target exists, so exactly one of several
    /// concurrent writers wins.
    IfAbsent,
}

/// Collects the object in memory (the repository writes whole objects it already holds)
/// and publishes it on close.
struct LocalWriter {
    root: Arc<PathBuf>,
    path: String,
    how: Publish,
    parts: Vec<Bytes>,
}

impl oio::Write for LocalWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.parts.extend(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        let (root, path, how, parts) =
            (self.root.clone(), self.path.clone(), self.how, std::mem::take(&mut self.parts));
        let size: usize = parts.iter().map(Bytes::len).sum();
        let published = tokio::task::spawn_blocking(move || publish(&root, &path, &parts, how))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
            .map_err(io_error)?;
        if !published {
            return Err(Error::new(ErrorKind::ConditionNotMatch, "the object exists already"));
        }
        Ok(MetadataBuilder::file(size as u64).build())
    }

    async fn abort(&mut self) -> Result<()> {
        self.parts.clear();
        Ok(())
    }
}

/// Writes a private (0600) temporary file, then moves it into place `how` says. Returns
/// false when `IfAbsent` found an object.
fn publish(root: &Path, path: &str, parts: &[Bytes], how: Publish) -> std::io::Result<bool> {
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
    let temp_dir = root.join(TEMP_DIR);
    create_private_dirs(&temp_dir)?;
    let temp = temp_dir.join(uuid::Uuid::new_v4().to_string());
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        match how {
            Publish::Replace => std::fs::rename(&temp, &target).map(|()| true),
            Publish::IfAbsent => match std::fs::hard_link(&temp, &target) {
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
