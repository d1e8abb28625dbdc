//! The storage backend against a local directory, SeaweedFS (S3), Azurite (Azure Blob),
//! nfs-ganesha (NFS) and Samba (SMB).

mod common;

use bytes::Bytes;
use xenvault_repo::backend::{self, Backend, BackendError, BackendOptions, ObjectStore};

/// The same contract on every backend: whole-object put/get, ranges, listing with sizes,
/// conditional create, idempotent delete.
async fn exercise(backend: &Backend) {
    let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    backend.put("packs/ab/one", data.clone()).await.expect("put");
    assert_eq!(backend.get("packs/ab/one").await.expect("get"), data);
    assert_eq!(backend.get_range("packs/ab/one", 1000..1010).await.expect("range"), data.slice(1000..1010));
    assert!(backend.exists("packs/ab/one").await.expect("exists"));
    assert!(!backend.exists("packs/ab/none").await.expect("exists"));

    backend.put("packs/cd/two", Bytes::from_static(b"2")).await.expect("put");
    backend.put("snapshots/s1", Bytes::from_static(b"s")).await.expect("put");
    let mut packs = backend.list("packs").await.expect("list");
    packs.sort_by(|a, b| a.path.cmp(&b.path));
    let listed: Vec<(&str, u64)> = packs.iter().map(|o| (o.path.as_str(), o.size)).collect();
    assert_eq!(listed, [("packs/ab/one", 100_000), ("packs/cd/two", 1)]);
    assert!(packs.iter().all(|o| o.modified.is_some()), "listing carries modification times: {packs:?}");
    assert_eq!(backend.list("").await.expect("list all").len(), 3);
    assert!(backend.list("nothing/").await.expect("list missing").is_empty());

    assert!(backend.put_if_absent("locks/l", Bytes::from_static(b"first")).await.expect("create"));
    assert!(!backend.put_if_absent("locks/l", Bytes::from_static(b"second")).await.expect("refuse"));
    assert_eq!(backend.get("locks/l").await.expect("get"), Bytes::from_static(b"first"));

    let missing = backend.get("packs/ab/none").await.expect_err("missing object");
    assert!(missing.is_not_found(), "{missing}");

    backend.delete("packs/ab/one").await.expect("delete");
    backend.delete("packs/ab/one").await.expect("delete twice");
    backend.delete_many(vec!["packs/cd/two".into(), "snapshots/s1".into()]).await.expect("delete many");
    let left: Vec<String> = backend.list("").await.expect("list").into_iter().map(|o| o.path).collect();
    assert_eq!(left, ["locks/l"]);
}

#[tokio::test]
async fn local_directory() {
    let dir = std::env::temp_dir().join(common::unique("xenvault-backend"));
    let backend = backend::open(dir.to_str().expect("utf-8"), &BackendOptions::default()).expect("open");
    exercise(&backend).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn s3_seaweedfs() {
    let server = common::s3();
    let backend = backend::open(&server.url("backend"), &server.options()).expect("open");
    exercise(&backend).await;
}

#[tokio::test]
async fn azure_azurite() {
    let server = common::azurite();
    let backend = backend::open(&server.url("backend"), &server.options()).expect("open");
    exercise(&backend).await;
}

#[tokio::test]
async fn nfs_ganesha() {
    let server = common::file_servers::nfs();
    let backend = backend::open(&server.url("backend"), &server.options()).expect("open");
    exercise(&backend).await;
}

#[tokio::test]
async fn smb_samba() {
    let server = common::file_servers::smb();
    let backend = backend::open(&server.url("backend"), &server.options()).expect("open");
    exercise(&backend).await;
}

/// A wrong SMB password is refused at once (no retries), named as such; a missing one
/// never reaches the server; a share that does not exist is named.
#[tokio::test]
async fn smb_errors_are_typed() {
    let server = common::file_servers::smb();
    let wrong = BackendOptions { retries: 0, ..common::file_servers::smb_options("not-the-password") };
    let err = backend::open(&server.url("auth"), &wrong).expect("open").list("").await.expect_err("refused");
    assert!(
        matches!(&err, BackendError::AccessDenied { message, .. } if message.contains("wrong user name or password")),
        "{err:?}"
    );

    let none = BackendOptions { retries: 0, ..BackendOptions::default() };
    let err = backend::open(&server.url("auth"), &none).expect("open").list("").await.expect_err("no password");
    assert!(
        matches!(&err, BackendError::Config { message, .. } if message.contains("XENVAULT_SMB_PASSWORD")),
        "{err:?}"
    );

    let opts = BackendOptions { retries: 0, ..server.options() };
    let other_share = server.url("x").replace("/repo/", "/no-such-share/");
    let err = backend::open(&other_share, &opts).expect("open").list("").await.expect_err("no share");
    assert!(matches!(&err, BackendError::Config { message, .. } if message.contains("no-such-share")), "{err:?}");
}

/// Nothing listening: a network error, for both protocols.
#[tokio::test]
async fn file_servers_unreachable_are_network_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let opts = BackendOptions { retries: 0, ..common::file_servers::smb_options("pw") };
    for url in [format!("nfs://127.0.0.1:{port}/repo/x"), format!("smb://u@127.0.0.1:{port}/repo/x")] {
        let err = backend::open(&url, &opts).expect("open").get("config").await.expect_err("no server");
        assert!(matches!(err, BackendError::Network { .. }), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn s3_errors_are_typed() {
    let server = common::s3();
    let opts = BackendOptions { retries: 0, ..server.options() };

    let wrong_key = BackendOptions { s3_secret_key: Some("not-the-secret".into()), ..opts.clone() };
    let backend = backend::open(&server.url("auth"), &wrong_key).expect("open");
    let err = backend.put("x", Bytes::from_static(b"x")).await.expect_err("refused");
    assert!(matches!(err, BackendError::AccessDenied { .. }), "{err:?}");

    let backend = backend::open("s3://no-such-bucket-here/p", &opts).expect("open");
    let err = backend.get("x").await.expect_err("no bucket");
    assert!(matches!(err, BackendError::NoSuchBucket { .. }), "{err:?}");

    // A closed port: nothing listens there once the probe socket is gone.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let unreachable = BackendOptions { s3_endpoint: Some(format!("http://127.0.0.1:{port}")), ..opts };
    let backend = backend::open("s3://b/p", &unreachable).expect("open");
    let err = backend.get("x").await.expect_err("no server");
    assert!(matches!(err, BackendError::Network { .. }), "{err:?}");
}

#[tokio::test]
async fn azure_missing_container_is_named() {
    let server = common::azurite();
    let opts = BackendOptions { retries: 0, ..server.options() };
    let backend = backend::open("azblob://no-such-container/p", &opts).expect("open");
    let err = backend.list("").await.expect_err("no container");
    assert!(matches!(err, BackendError::NoSuchBucket { .. }), "{err:?}");
}

#[test]
fn bad_locations_are_rejected() {
    for url in
        ["ftp://host/x", "s3://", "azblob:///prefix", "", "nfs://host", "nfs://host/", "smb://nas/", "smb://a:b@nas/s"]
    {
        let err = backend::open(url, &BackendOptions::default()).expect_err(url);
        assert!(matches!(err, BackendError::InvalidUrl { .. }), "{url}: {err:?}");
    }
}
