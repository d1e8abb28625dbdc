//! Exports and NBD serving of a stored disk, checked with qemu-img and nbdcopy against the
//! repository's own raw restore.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use xenvault_nbd::Export;
use xenvault_repo::keys::Encryption;
use xenvault_repo::{DiskReader, InitOptions, Repository, SourceInfo};
use xenvault_restore::RepoDisk;
use xenvault_restore::export::{DiskFormat, export};
use xenvault_restore::nbd::{DiskExport, SingleExport};
use xenvault_types::progress::{Key, Phase, Tally, Task};

const SIZE: u64 = 48 << 20;

/// A sparse disk with data in a few places, one of them straddling chunk boundaries.
fn image(path: &Path) {
    let mut disk = vec![0u8; SIZE as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (start, len) in [(0u64, 70_000u64), (5 << 20, 300_000), ((20 << 20) + 12_345, 1 << 20), (SIZE - 4096, 4096)] {
        for b in &mut disk[start as usize..(start + len) as usize] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    std::fs::write(path, disk).unwrap();
}

async fn stored(dir: &Path) -> (Repository, Arc<DiskReader>) {
    let src = dir.join("disk.raw");
    image(&src);
    let opts = InitOptions {
        encryption: Encryption::Aes256Gcm,
        secret: Some(xenvault_repo::keys::Secret::passphrase("pw")),
        kdf: xenvault_repo::keys::KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo = Repository::init(dir.join("repo").to_str().unwrap(), &Default::default(), opts).await.unwrap();
    let session =
        repo.start_backup(SourceInfo { id: "img".into(), kind: "image".into(), name: "img".into() }).await.unwrap();
    let source = xenvault_repo::open_image(&src, Default::default()).unwrap();
    let mut w = session.disk_writer(0, "disk0", "", SIZE, None).await.unwrap();
    w.write_source(source).await.unwrap();
    w.finish().await.unwrap();
    let m = session.commit(serde_json::json!({}), vec![]).await.unwrap();
    let reader = Arc::new(DiskReader::new(&repo, &m.disks[0]).await.unwrap());
    (repo, reader)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

async fn export_to(reader: &Arc<DiskReader>, format: DiskFormat, path: &Path) -> xenvault_restore::export::ExportStats {
    let disk = RepoDisk::new(reader.clone(), tokio::runtime::Handle::current());
    let file = std::fs::File::create(path).unwrap();
    let tally = Tally::new();
    let key = Key::new(None, Some(0), Phase::Export);
    let task = Task::start(tally.clone(), key.clone(), "export", SIZE);
    let stats = tokio::task::spawn_blocking(move || export(&disk, format, file, &task, &Default::default()))
        .await
        .unwrap()
        .unwrap();
    // A bar sized to the disk ends full, holes left out of the image included.
    let bar = &tally.states()[&key];
    assert_eq!((bar.done, bar.total, bar.finished), (SIZE, SIZE, true), "{format:?} progress");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_vhd_and_qcow2_exports_equal_the_raw_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, reader) = stored(dir.path()).await;
    let reference = dir.path().join("restored.raw");
    reader
        .restore_to_file(
            &reference,
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&reference).unwrap(), std::fs::read(dir.path().join("disk.raw")).unwrap());

    let raw = dir.path().join("export.raw");
    let stats = export_to(&reader, DiskFormat::Raw, &raw).await;
    assert_eq!(stats.output_bytes, SIZE);
    assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&reference).unwrap());

    let vhd = dir.path().join("export.vhd");
    let stats = export_to(&reader, DiskFormat::Vhd, &vhd).await;
    assert!(stats.output_bytes < SIZE / 4, "holes were written: {stats:?}");
    run(Command::new("qemu-img").args(["compare", "-f", "vpc", "-F", "raw"]).arg(&vhd).arg(&reference));

    let qcow2 = dir.path().join("export.qcow2");
    let stats = export_to(&reader, DiskFormat::Qcow2, &qcow2).await;
    assert!(stats.output_bytes < SIZE / 4, "holes were written: {stats:?}");
    run(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&qcow2));
    let info = run(Command::new("qemu-img").args(["info", "-f", "qcow2"]).arg(&qcow2));
    assert!(info.contains("compat: 1.1"), "{info}");
    run(Command::new("qemu-img").args(["compare", "-f", "qcow2", "-F", "raw"]).arg(&qcow2).arg(&reference));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_serves_the_restore_point_byte_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, reader) = stored(dir.path()).await;
    let reference = dir.path().join("restored.raw");
    reader
        .restore_to_file(
            &reference,
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resolver =
        Arc::new(SingleExport { name: "disk0".into(), export: Arc::new(DiskExport::read_only(reader.clone())) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(xenvault_nbd::serve(listener, xenvault_nbd::ServerConfig::modern(None), resolver, async {
            let _ = stopped.await;
        }));
    let url = format!("nbd://127.0.0.1:{port}/disk0");
    let copy = dir.path().join("nbd.raw");
    let (u, c, r) = (url.clone(), copy.clone(), reference.clone());
    tokio::task::spawn_blocking(move || {
        let info = run(Command::new("nbdinfo").arg(&u));
        assert!(info.contains(&format!("export-size: {SIZE}")), "{info}");
        let map = run(Command::new("nbdinfo").arg("--map").arg(&u));
        assert!(map.contains("hole,zero"), "no holes reported: {map}");
        run(Command::new("nbdcopy").arg(&u).arg(&c));
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&u).arg(&r));
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&reference).unwrap());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_takes_writes_without_touching_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, reader) = stored(dir.path()).await;
    let read_only = DiskExport::read_only(reader.clone());
    assert!(!read_only.writable());
    assert!(read_only.write_at(0, bytes::Bytes::from_static(b"x")).await.is_err());

    let overlay = DiskExport::with_overlay(reader.clone());
    assert!(overlay.writable());
    let before = overlay.read_at(65_530, 20).await.unwrap();
    overlay.write_at(65_534, bytes::Bytes::from_static(b"abcd")).await.unwrap();
    let after = overlay.read_at(65_530, 20).await.unwrap();
    assert_eq!(&after[4..8], b"abcd");
    assert_eq!((&after[..4], &after[8..]), (&before[..4], &before[8..]));
    assert_eq!(overlay.overlay_bytes(), 2 << 16);
    let mut stored = vec![0u8; 20];
    reader.read_at(65_530, &mut stored).await.unwrap();
    assert_eq!(stored, before.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_fails_every_export_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, reader) = stored(dir.path()).await;
    // The chunk holding the data at 5 MiB.
    let id = reader.chunk_id((5 << 20) / reader.chunk_size()).await.unwrap();
    let loc = repo.locate(&id).unwrap();
    let pack = dir.path().join("repo").join(loc.pack.data_object());
    let mut data = std::fs::read(&pack).unwrap();
    data[loc.offset as usize + 40] ^= 0x08;
    std::fs::write(&pack, data).unwrap();

    for format in [DiskFormat::Raw, DiskFormat::Vhd, DiskFormat::Qcow2] {
        let disk = RepoDisk::new(reader.clone(), tokio::runtime::Handle::current());
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let task = Task::hidden(Phase::Export);
        let err = tokio::task::spawn_blocking(move || export(&disk, format, file, &task, &Default::default()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains(&format!("chunk {id}")), "{format:?}: {err}");
    }
}
