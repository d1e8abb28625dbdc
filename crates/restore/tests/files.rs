//! File-level restore from restore points of the seeded demo disks: every file of every
//! fixtures manifest extracts byte-identically with its mode and mtime, through the
//! repository's authenticated random reads.

use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use xenvault_fixtures::{DemoDisk, EntryKind as Kind, build_demo_disks};
use xenvault_repo::keys::Encryption;
use xenvault_repo::{DiskReader, InitOptions, Repository, SourceInfo};
use xenvault_restore::files::StoredFs;
use xenvault_restore::{Error, RepoDisk};

async fn backed_up(dir: &Path, disks: &[&DemoDisk]) -> (Repository, xenvault_repo::Manifest) {
    let opts = InitOptions { encryption: Encryption::None, ..Default::default() };
    let repo = Repository::init(dir.join("repo").to_str().unwrap(), &Default::default(), opts).await.unwrap();
    let session =
        repo.start_backup(SourceInfo { id: "demo".into(), kind: "image".into(), name: "demo".into() }).await.unwrap();
    for (i, d) in disks.iter().enumerate() {
        let source = xenvault_repo::open_image(&d.path, Default::default()).unwrap();
        let mut w = session.disk_writer(i as u32, &format!("disk{i}"), "", source.size(), None).await.unwrap();
        w.write_source(source).await.unwrap();
        w.finish().await.unwrap();
    }
    let m = session.commit(serde_json::json!({}), vec![]).await.unwrap();
    (repo, m)
}

async fn stored_disk(repo: &Repository, m: &xenvault_repo::Manifest, n: usize) -> RepoDisk {
    let reader = DiskReader::new(repo, &m.disks[n]).await.unwrap();
    RepoDisk::new(Arc::new(reader), tokio::runtime::Handle::current())
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

async fn check_disk(repo: &Repository, m: &xenvault_repo::Manifest, n: usize, demo: &DemoDisk, out: &Path) {
    for vol in &demo.manifest.volumes {
        let Some(manifest) = &vol.fs else { continue };
        let fs = StoredFs::open(stored_disk(repo, m, n).await, Some(vol.name.clone())).await.unwrap();
        let dest = out.join(format!("d{n}-{}", vol.name.replace('/', "_")));
        fs.extract("/", &dest).await.unwrap();
        for f in &manifest.files {
            let label = format!("{}:{}", vol.name, f.path);
            let info = fs.stat(&f.path).await.unwrap_or_else(|e| panic!("{label}: {e}"));
            let local = dest.join(f.path.trim_start_matches('/'));
            let meta = std::fs::symlink_metadata(&local).unwrap_or_else(|e| panic!("{label}: {e}"));
            match f.kind {
                Kind::File => {
                    assert_eq!((info.size, meta.len()), (f.size, f.size), "{label}");
                    assert_eq!(Some(sha256_file(&local)), f.sha256, "{label}: content");
                }
                Kind::Dir => assert!(meta.is_dir() && info.kind == xenvault_fsread::EntryKind::Dir, "{label}"),
                Kind::Symlink => {
                    assert_eq!(std::fs::read_link(&local).unwrap().to_str(), f.target.as_deref(), "{label}");
                    continue;
                }
            }
            if let Some(mode) = f.mode {
                assert_eq!(meta.permissions().mode() & 0o7777, mode, "{label}: mode");
            }
            if let Some(mtime) = f.mtime {
                assert_eq!(meta.mtime(), mtime, "{label}: mtime");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_demo_file_system_extract_identically() {
    let dir = tempfile::tempdir().unwrap();
    let demo = build_demo_disks(&dir.path().join("disks")).unwrap();
    let disks = [&demo.linux_root, &demo.linux_data, &demo.windows];
    let (repo, m) = backed_up(dir.path(), &disks).await;
    let out = dir.path().join("out");
    for (n, d) in disks.iter().enumerate() {
        check_disk(&repo, &m, n, d, &out).await;
    }

    // Listing, search and the default volume (the largest file system).
    let root = StoredFs::open(stored_disk(&repo, &m, 0).await, None).await.unwrap();
    assert_eq!(root.volume().name, "p1");
    assert_eq!(root.read("/etc/hostname").await.unwrap(), b"demo-linux\n");
    let names: Vec<_> = root.list("/etc").await.unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"hostname".to_string()), "{names:?}");
    let hits: Vec<_> = root.find("/home/**/*.txt").await.unwrap().into_iter().map(|e| e.path).collect();
    assert!(hits.iter().any(|p| p == "/home/alice/My Documents/résumé 2024.txt"), "{hits:?}");
    let sparse = out.join("sparse.img");
    root.extract("/var/log/sparse.img", &sparse).await.unwrap();
    assert!(std::fs::metadata(&sparse).unwrap().blocks() * 512 < 1 << 20, "sparse file extracted dense");

    // Nothing at the destination is overwritten or followed: a file, a symlink to a file, a
    // symlink to a directory, or a symlink inside an existing directory.
    let refused = |err: Error| assert!(matches!(err, Error::Fs(xenvault_fsread::Error::Exists(_))), "{err}");
    let victim = out.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let victim_dir = out.join("victim-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    let (link, dir_link, tree) = (out.join("link"), out.join("dir-link"), out.join("etc-again"));
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::symlink(&victim_dir, &dir_link).unwrap();
    std::fs::create_dir(&tree).unwrap();
    std::os::unix::fs::symlink(&victim, tree.join("hostname")).unwrap();
    refused(root.extract("/var/log/sparse.img", &sparse).await.unwrap_err());
    refused(root.extract("/etc/hostname", &link).await.unwrap_err());
    refused(root.extract("/etc", &dir_link).await.unwrap_err());
    refused(root.extract("/etc", &tree).await.unwrap_err());
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
    let streamed = out.join("streamed");
    assert_eq!(root.copy_file("/etc/hostname", std::fs::File::create(&streamed).unwrap()).await.unwrap(), 11);
    assert_eq!(std::fs::read(&streamed).unwrap(), b"demo-linux\n");
    assert!(matches!(root.copy_file("/etc", Vec::new()).await, Err(Error::Fs(xenvault_fsread::Error::NotAFile(_)))));

    // Errors are typed: unknown volume, swap holds no file system, missing path.
    let err = StoredFs::open(stored_disk(&repo, &m, 0).await, Some("p9".into())).await.err().unwrap();
    assert!(matches!(err, Error::NoSuchVolume { .. }), "{err}");
    let err = StoredFs::open(stored_disk(&repo, &m, 0).await, Some("p5".into())).await.err().unwrap();
    assert!(matches!(err, Error::Fs(xenvault_fsread::Error::UnknownFileSystem)), "{err}");
    assert!(matches!(root.stat("/nope").await, Err(Error::Fs(xenvault_fsread::Error::NotFound(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_without_a_file_system_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.raw");
    let noise: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, noise).unwrap();
    let disk = DemoDisk {
        path,
        manifest: xenvault_fixtures::DiskManifest {
            size: 4 << 20,
            layout: xenvault_fixtures::Layout::Mbr,
            volumes: vec![],
        },
    };
    let (repo, m) = backed_up(dir.path(), &[&disk]).await;
    let err = StoredFs::open(stored_disk(&repo, &m, 0).await, None).await.err().unwrap();
    assert!(matches!(err, Error::NoFileSystem(_)), "{err}");
}
