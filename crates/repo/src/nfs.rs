//! `nfs://host[:port]/path`: a repository on an NFSv4.1 server without a mount, through the
//! userspace client of the `nfs-rs` crate (TCP, AUTH_SYS). The path is taken from the
//! server's NFSv4 pseudo root (`/export/dir` for an export `/export`); the port is 2049
//! unless given. AUTH_SYS carries no secret: the server trusts the uid and gid the client
//! sends, this process's. The connection uses an unprivileged source port, so the export
//! must not require a reserved one (Linux knfsd: `insecure`; nfs-ganesha allows it by
//! default).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use nfs_rs::{Mount, Nfs3ErrorCode, Nfs4ErrorCode, NfsError};
use opendal::{Error, ErrorKind, Result};

use crate::remote::{Reconnecting, RemoteEntry, RemoteFs, network_error};

const DEFAULT_PORT: u16 = 2049;
/// NFS file types (`ftype3`, `nfs_ftype4`): regular file and directory.
const REGULAR: u32 = 1;
const DIRECTORY: u32 = 2;

/// Where an `nfs://` location points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NfsLocation {
    pub host: String,
    pub port: u16,
    /// From the pseudo root, without leading or trailing `/`.
    pub path: String,
}

/// Parses what follows `nfs://`.
pub(crate) fn parse(rest: &str) -> std::result::Result<NfsLocation, &'static str> {
    const FORM: &str = "expected nfs://host[:port]/export[/path]";
    let (authority, path) = rest.split_once('/').ok_or(FORM)?;
    let (host, port) = crate::remote::split_host_port(authority, DEFAULT_PORT).ok_or(FORM)?;
    let path = path.trim_matches('/');
    if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") || path.contains(['?', '#']) {
        return Err(FORM);
    }
    Ok(NfsLocation { host, port, path: path.to_string() })
}

/// The NFS client of one location.
pub(crate) struct NfsFs {
    location: NfsLocation,
    mount: Reconnecting<Box<dyn Mount>>,
}

impl std::fmt::Debug for NfsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsFs").field("location", &self.location).finish_non_exhaustive()
    }
}

impl NfsFs {
    pub fn new(location: NfsLocation) -> Self {
        Self { location, mount: Reconnecting::default() }
    }

    /// The mount of the server's pseudo root.
    async fn connect(&self) -> Result<Box<dyn Mount>> {
        let NfsLocation { host, port, .. } = &self.location;
        let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let url = format!("nfs://{host}/?version=4.1&nfsport={port}&noresvport=true");
        nfs_rs::parse_url_and_mount(&url).await.map_err(|e| self.error("mount", "", e))
    }

    /// `path` below the location's directory, from the pseudo root.
    fn full(&self, path: &str) -> String {
        match path {
            "" => self.location.path.clone(),
            _ => format!("{}/{path}", self.location.path),
        }
    }

    /// Runs `op` on the mount; a connection error drops the mount, so the retry connects again.
    async fn with_mount<T, F, Fut>(&self, operation: &str, path: &str, op: F) -> Result<T>
    where
        F: FnOnce(Arc<Box<dyn Mount>>, String) -> Fut,
        Fut: Future<Output = std::result::Result<T, NfsError>>,
    {
        let mount = self.mount.get(self.connect()).await?;
        match op(mount.clone(), self.full(path)).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let error = self.error(operation, path, e);
                if error.is_temporary() {
                    self.mount.forget(&mount).await;
                }
                Err(error)
            }
        }
    }

    fn error(&self, operation: &str, path: &str, e: NfsError) -> Error {
        let at = format!("NFS {operation} {path}");
        if e.is_not_found() {
            return Error::new(ErrorKind::NotFound, format!("{at}: {e}"));
        }
        if e.is_exist() {
            return Error::new(ErrorKind::AlreadyExists, format!("{at}: {e}"));
        }
        let denied = matches!(
            e,
            NfsError::Nfs4(Nfs4ErrorCode::NFS4ERR_ACCESS | Nfs4ErrorCode::NFS4ERR_PERM)
                | NfsError::Nfs3(Nfs3ErrorCode::NFS3ERR_ACCES | Nfs3ErrorCode::NFS3ERR_PERM)
        );
        if denied {
            return Error::new(ErrorKind::PermissionDenied, format!("{at}: {e}"));
        }
        let full = matches!(
            e,
            NfsError::Nfs4(Nfs4ErrorCode::NFS4ERR_NOSPC | Nfs4ErrorCode::NFS4ERR_DQUOT)
                | NfsError::Nfs3(Nfs3ErrorCode::NFS3ERR_NOSPC | Nfs3ErrorCode::NFS3ERR_DQUOT)
        );
        if full {
            let io = std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string());
            return Error::new(ErrorKind::Unexpected, format!("{at}: {e}")).set_source(io);
        }
        let broken = e.is_connection_lost()
            || e.is_server_busy()
            || matches!(
                e,
                NfsError::Io(_) | NfsError::ClientClosed(_) | NfsError::ClosedResource(_) | NfsError::Rpc(_)
            );
        if broken {
            return network_error(format!("{at}: {e}"));
        }
        Error::new(ErrorKind::Unexpected, format!("{at}: {e}"))
    }
}

fn entry(name: String, attr: &nfs_rs::Attr) -> RemoteEntry {
    let modified = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(u64::from(attr.mtime.seconds), attr.mtime.nseconds.min(999_999_999)));
    RemoteEntry { name, is_dir: attr.type_ == DIRECTORY, size: attr.filesize, modified }
}

impl RemoteFs for NfsFs {
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<RemoteEntry>>> {
        Box::pin(async move {
            let found = self.with_mount("stat", path, |m, full| async move { m.getattr_path(&full).await }).await;
            match found {
                Ok(attr) => Ok(Some(entry(path.to_string(), &attr))),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn read<'a>(&'a self, path: &'a str, offset: u64, len: usize) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            self.with_mount("read", path, |m, full| async move {
                let file = m.lookup_path(&full).await?;
                let max = m.get_max_read_size().max(4096);
                let mut out = Vec::with_capacity(len);
                while out.len() < len {
                    let want = (len - out.len()).min(max as usize) as u32;
                    let chunk = m.read(file.fh.clone(), offset + out.len() as u64, want).await?;
                    if chunk.is_empty() {
                        break;
                    }
                    out.extend_from_slice(&chunk);
                }
                Ok(Bytes::from(out))
            })
            .await
        })
    }

    fn create_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let made = self.with_mount("mkdir", path, |m, full| async move { m.mkdir_path(&full, 0o700).await }).await;
            match made {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn write_new<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.with_mount("write", path, |m, full| async move {
                let file = m.create_path(&full, Some(0o600)).await?;
                // write_all returns once the data is committed to stable storage.
                let written = nfs_rs::write_all(&**m, file.fh.clone(), 0, data).await;
                let closed = m.close(file.fh).await;
                written?;
                closed
            })
            .await
        })
    }

    /// RENAME replaces atomically; a create that must not replace is a LINK (which fails
    /// when the name is taken) and the removal of the temporary name.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str, replace: bool) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let target = self.full(to);
            let moved = self
                .with_mount("rename", from, |m, full| async move {
                    if replace {
                        m.rename_path(&full, &target).await
                    } else {
                        m.link_path(&full, &target).await.map(drop)
                    }
                })
                .await;
            match moved {
                Ok(()) if replace => Ok(true),
                Ok(()) => self.remove(from).await.map(|()| true),
                Err(e) if !replace && e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn read_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<RemoteEntry>>> {
        Box::pin(async move {
            self.with_mount("list", path, |m, full| async move {
                let mut entries = Vec::new();
                let mut stream = m.readdirplus_path(&full).await?;
                while let Some(found) = stream.try_next().await? {
                    if found.file_name == "." || found.file_name == ".." {
                        continue;
                    }
                    match &found.attr {
                        Some(attr) if matches!(attr.type_, REGULAR | DIRECTORY) => {
                            entries.push(entry(found.file_name.clone(), attr))
                        }
                        // Without attributes (or not a file or directory): ask for them.
                        _ => {
                            let attr = m.getattr_path(&format!("{full}/{}", found.file_name)).await?;
                            if matches!(attr.type_, REGULAR | DIRECTORY) {
                                entries.push(entry(found.file_name.clone(), &attr));
                            }
                        }
                    }
                }
                Ok(entries)
            })
            .await
        })
    }

    fn remove<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.with_mount("remove", path, |m, full| async move { m.remove_path(&full).await }).await {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let parsed = parse("nas.example:20490/export/xen/").unwrap();
        assert_eq!(parsed, NfsLocation { host: "nas.example".into(), port: 20490, path: "export/xen".into() });
        assert_eq!(parse("[::1]/e").unwrap().host, "::1");
        assert_eq!(parse("h/e").unwrap().port, DEFAULT_PORT);
        for bad in ["", "host", "host/", ":1/e", "h:x/e", "h/a/../b", "h/e?x=1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
