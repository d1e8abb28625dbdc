//! `smb://[user@]host[:port]/share/path`: a repository on an SMB2/3 share without a mount,
//! through the pure-Rust client of the `smb` crate (NTLM, signing and encryption as the
//! server negotiates). The user comes from the URL or [`crate::BackendOptions::smb_user`],
//! the password from `smb_password` or `smb_password_file` (never from the URL), the domain
//! from `smb_domain`.
//! The port is 445 unless given.

use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use opendal::{Error, ErrorKind, Result};
use smb::binrw_util::file_time::FileTime;
use smb::{
    Client, ClientConfig, ConnectionConfig, CreateDisposition, CreateOptions, DirAccessMask, Directory, FileAccessMask,
    FileAttributes, FileCreateArgs, FileDirectoryInformation, FileDispositionInformation, FileRenameInformation,
    ReadAt, Resource, ResourceHandle, UncPath, WriteAt,
};

use crate::remote::{Reconnecting, RemoteEntry, RemoteFs, network_error};

const DEFAULT_PORT: u16 = 445;

/// NTSTATUS values the backend acts on.
const STATUS_NO_SUCH_FILE: u32 = 0xC000_000F;
const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
const STATUS_OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
const STATUS_OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
const STATUS_OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
const STATUS_DELETE_PENDING: u32 = 0xC000_0056;
const STATUS_LOGON_FAILURE: u32 = 0xC000_006D;
const STATUS_DISK_FULL: u32 = 0xC000_007F;
const STATUS_BAD_NETWORK_NAME: u32 = 0xC000_00CC;

/// Where an `smb://` location points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SmbLocation {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    pub share: String,
    /// Inside the share, without leading or trailing `/`; may be empty.
    pub path: String,
}

/// Parses what follows `smb://`.
pub(crate) fn parse(rest: &str) -> std::result::Result<SmbLocation, &'static str> {
    const FORM: &str = "expected smb://[user@]host[:port]/share[/path] (the password goes in XENVAULT_SMB_PASSWORD)";
    let (authority, path) = rest.split_once('/').ok_or(FORM)?;
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') => return Err(FORM),
        Some((user, host_port)) if !user.is_empty() => (Some(user.to_string()), host_port),
        Some(_) => return Err(FORM),
        None => (None, authority),
    };
    let (host, port) = crate::remote::split_host_port(host_port, DEFAULT_PORT).ok_or(FORM)?;
    let path = path.trim_matches('/');
    let invalid = |c: &str| c.is_empty() || c == "." || c == ".." || c.contains(['\\', '?', '#', '*']);
    let (share, path) = path.split_once('/').unwrap_or((path, ""));
    if invalid(share) || (!path.is_empty() && path.split('/').any(invalid)) {
        return Err(FORM);
    }
    Ok(SmbLocation { user, host, port, share: share.to_string(), path: path.to_string() })
}

/// Credentials of an SMB location.
#[derive(Clone)]
pub(crate) struct SmbLogin {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    pub domain: Option<String>,
}

/// The SMB client of one location.
pub(crate) struct SmbFs {
    location: SmbLocation,
    login: SmbLogin,
    client: Reconnecting<Client>,
}

impl std::fmt::Debug for SmbFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbFs").field("location", &self.location).finish_non_exhaustive()
    }
}

impl SmbFs {
    pub fn new(location: SmbLocation, login: SmbLogin) -> Self {
        Self { location, login, client: Reconnecting::default() }
    }

    fn share(&self) -> Result<UncPath> {
        let unc = format!(r"\\{}\{}", self.location.host, self.location.share);
        UncPath::from_str(&unc).map_err(|e| Error::new(ErrorKind::ConfigInvalid, format!("SMB share {unc}: {e}")))
    }

    /// A client logged in to the share.
    async fn connect(&self) -> Result<Client> {
        let user = self.login.user.clone().or_else(|| self.location.user.clone()).ok_or_else(|| {
            Error::new(ErrorKind::ConfigInvalid, "no SMB user: give smb://user@host/... or XENVAULT_SMB_USER")
        })?;
        let password = self.password()?;
        let user = match &self.login.domain {
            Some(domain) => format!(r"{domain}\{user}"),
            None => user,
        };
        let config = ClientConfig {
            connection: ConnectionConfig { port: Some(self.location.port), ..Default::default() },
            ..Default::default()
        };
        let client = Client::new(config);
        client.share_connect(&self.share()?, &user, password).await.map_err(|e| self.error("login", "", e))?;
        Ok(client)
    }

    /// The password given, else the first line of the password file.
    fn password(&self) -> Result<String> {
        if let Some(password) = &self.login.password {
            return Ok(password.clone());
        }
        let Some(file) = &self.login.password_file else {
            let message = "no SMB password: set XENVAULT_SMB_PASSWORD or XENVAULT_SMB_PASSWORD_FILE";
            return Err(Error::new(ErrorKind::ConfigInvalid, message));
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::new(ErrorKind::ConfigInvalid, format!("reading the SMB password file {}: {e}", file.display()))
        })?;
        match text.lines().next() {
            Some(line) if !line.is_empty() => Ok(line.to_string()),
            _ => {
                Err(Error::new(ErrorKind::ConfigInvalid, format!("the SMB password file {} is empty", file.display())))
            }
        }
    }

    /// The UNC path of `path` below the location's directory.
    fn unc(&self, path: &str) -> Result<UncPath> {
        let inside = [self.location.path.as_str(), path].into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>();
        Ok(self.share()?.with_path(&inside.join("\\").replace('/', "\\")))
    }

    /// Runs `op` with the client and the UNC path of `path`; a connection error drops the
    /// client, so the retry connects again.
    async fn with_client<T, F, Fut>(&self, operation: &str, path: &str, op: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>, UncPath) -> Fut,
        Fut: Future<Output = std::result::Result<T, smb::Error>>,
    {
        let client = self.client.get(self.connect()).await?;
        match op(client.clone(), self.unc(path)?).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let error = self.error(operation, path, e);
                if error.is_temporary() {
                    self.client.forget(&client).await;
                    let _ = client.close().await;
                }
                Err(error)
            }
        }
    }

    /// Opens `path` with `args`, runs `op` on it and closes it.
    async fn with_resource<T, F, Fut>(&self, operation: &str, path: &str, args: FileCreateArgs, op: F) -> Result<T>
    where
        F: FnOnce(Arc<Resource>) -> Fut,
        Fut: Future<Output = std::result::Result<T, smb::Error>>,
    {
        self.with_client(operation, path, |client, unc| async move {
            let resource = Arc::new(client.create_file(&unc, &args).await?);
            let outcome = op(resource.clone()).await;
            let closed = handle(&resource).close().await;
            let value = outcome?;
            closed.map(|()| value)
        })
        .await
    }

    fn error(&self, operation: &str, path: &str, e: smb::Error) -> Error {
        let at = format!("SMB {operation} {path}");
        let status = match &e {
            smb::Error::ReceivedErrorMessage(status, _) | smb::Error::UnexpectedMessageStatus(status) => Some(*status),
            _ => None,
        };
        let kind = match status {
            Some(
                STATUS_NO_SUCH_FILE
                | STATUS_OBJECT_NAME_NOT_FOUND
                | STATUS_OBJECT_PATH_NOT_FOUND
                | STATUS_DELETE_PENDING,
            ) => ErrorKind::NotFound,
            Some(STATUS_OBJECT_NAME_COLLISION) => ErrorKind::AlreadyExists,
            Some(STATUS_ACCESS_DENIED | STATUS_LOGON_FAILURE) => ErrorKind::PermissionDenied,
            Some(STATUS_BAD_NETWORK_NAME) => ErrorKind::ConfigInvalid,
            Some(STATUS_DISK_FULL) => {
                let io = std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string());
                return Error::new(ErrorKind::Unexpected, format!("{at}: {e}")).set_source(io);
            }
            Some(_) => ErrorKind::Unexpected,
            None if matches!(e, smb::Error::SspiError(_)) => ErrorKind::PermissionDenied,
            None => return network_error(format!("{at}: {e}")),
        };
        let message = match status {
            Some(STATUS_LOGON_FAILURE) => format!("{at}: wrong user name or password"),
            Some(STATUS_BAD_NETWORK_NAME) => format!("{at}: no share {:?} on the server", self.location.share),
            _ => format!("{at}: {e}"),
        };
        Error::new(kind, message)
    }
}

fn handle(resource: &Resource) -> &ResourceHandle {
    match resource {
        Resource::File(file) => file,
        Resource::Directory(dir) => dir,
        Resource::Pipe(pipe) => pipe,
    }
}

async fn list_directory(dir: &Arc<Directory>) -> std::result::Result<Vec<RemoteEntry>, smb::Error> {
    let mut entries = Vec::new();
    let mut stream = Directory::query::<FileDirectoryInformation>(dir, "*").await?;
    while let Some(info) = stream.next().await {
        let info = info?;
        let name = info.file_name.to_string();
        if name == "." || name == ".." {
            continue;
        }
        entries.push(RemoteEntry {
            name,
            is_dir: info.file_attributes.directory(),
            size: info.end_of_file,
            modified: Some(SystemTime::from(info.last_write_time)),
        });
    }
    Ok(entries)
}

fn open_existing(access: FileAccessMask) -> FileCreateArgs {
    FileCreateArgs::make_open_existing(access)
}

fn file_of(resource: &Resource) -> std::result::Result<&smb::File, smb::Error> {
    resource.as_file().ok_or_else(|| smb::Error::InvalidState("a directory where a file was expected".into()))
}

impl RemoteFs for SmbFs {
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<RemoteEntry>>> {
        Box::pin(async move {
            let args = open_existing(FileAccessMask::new().with_file_read_attributes(true));
            let found = self
                .with_resource("stat", path, args, |resource| async move {
                    let handle = handle(&resource);
                    let modified = SystemTime::from(FileTime::from(handle.modified()));
                    let size = match resource.as_file() {
                        Some(file) => smb::GetLen::get_len(file).await?,
                        None => 0,
                    };
                    Ok(RemoteEntry {
                        name: path.to_string(),
                        is_dir: resource.is_dir(),
                        size,
                        modified: Some(modified),
                    })
                })
                .await;
            match found {
                Ok(entry) => Ok(Some(entry)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn read<'a>(&'a self, path: &'a str, offset: u64, len: usize) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let args = open_existing(FileAccessMask::new().with_generic_read(true));
            self.with_resource("read", path, args, |resource| async move {
                let file = file_of(&resource)?;
                let mut out = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    let n = file.read_at(&mut out[filled..], offset + filled as u64).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                out.truncate(filled);
                Ok(Bytes::from(out))
            })
            .await
        })
    }

    fn create_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let args = FileCreateArgs {
                disposition: CreateDisposition::Create,
                attributes: FileAttributes::new().with_directory(true),
                options: CreateOptions::new().with_directory_file(true),
                desired_access: DirAccessMask::new().with_list_directory(true).into(),
            };
            match self.with_resource("mkdir", path, args, |_| async { Ok(()) }).await {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }
        })
    }

    fn write_new<'a>(&'a self, path: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let args = FileCreateArgs::make_create_new(FileAttributes::new(), CreateOptions::new());
            self.with_resource("write", path, args, |resource| async move {
                let file = file_of(&resource)?;
                let mut written = 0;
                while written < data.len() {
                    let n = file.write_at(&data[written..], written as u64).await?;
                    if n == 0 {
                        return Err(smb::Error::InvalidState("the server accepted no bytes".into()));
                    }
                    written += n;
                }
                // The data must be on stable storage before the rename publishes it.
                file.flush().await?;
                Ok(())
            })
            .await
        })
    }

    /// SET_INFO FileRenameInformation: with ReplaceIfExists false the server refuses an
    /// existing target (STATUS_OBJECT_NAME_COLLISION), atomically.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str, replace: bool) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let target = self.unc(to)?.path().unwrap_or_default().to_string();
            let args = open_existing(FileAccessMask::new().with_delete(true).with_file_read_attributes(true));
            let renamed = self
                .with_resource("rename", from, args, |resource| async move {
                    let info = FileRenameInformation {
                        replace_if_exists: replace.into(),
                        root_directory: 0,
                        file_name: target.into(),
                    };
                    handle(&resource).set_info(info).await
                })
                .await;
            match renamed {
                Ok(()) => Ok(true),
                Err(e) if !replace && e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn read_dir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<RemoteEntry>>> {
        Box::pin(async move {
            let args = open_existing(DirAccessMask::new().with_list_directory(true).into());
            self.with_client("list", path, |client, unc| async move {
                let Resource::Directory(dir) = client.create_file(&unc, &args).await? else {
                    return Err(smb::Error::InvalidState("a file where a directory was expected".into()));
                };
                let dir = Arc::new(dir);
                let listed = list_directory(&dir).await;
                let closed = dir.close().await;
                let entries = listed?;
                closed.map(|()| entries)
            })
            .await
        })
    }

    fn remove<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let args = open_existing(FileAccessMask::new().with_delete(true));
            let removed = self
                .with_resource("remove", path, args, |resource| async move {
                    handle(&resource).set_info(FileDispositionInformation::default()).await
                })
                .await;
            match removed {
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
        let parsed = parse("backup@nas:4455/xen/repo/").unwrap();
        let expected = SmbLocation {
            user: Some("backup".into()),
            host: "nas".into(),
            port: 4455,
            share: "xen".into(),
            path: "repo".into(),
        };
        assert_eq!(parsed, expected);
        assert_eq!(parse("nas/share").unwrap().path, "");
        assert_eq!(parse("nas/share").unwrap().port, DEFAULT_PORT);
        for bad in ["", "nas", "nas/", "user:pw@nas/share", "@nas/share", "nas/share/../x", "nas/a\\b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
