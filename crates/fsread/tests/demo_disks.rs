//! Reads the seeded demo disks (real file systems made by mkfs tools) and checks every
//! file of every manifest: listing metadata, and extraction byte for byte.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use xenvault_fixtures::{DemoDisk, DemoDisks, EntryKind as Kind, FsManifest, build_demo_disks};
use xenvault_fsread::{Content, EntryKind, Error, FileSystem, FsType, ReadAt, Volume, probe};

fn demo() -> &'static DemoDisks {
    static DISKS: OnceLock<(tempfile::TempDir, DemoDisks)> = OnceLock::new();
    &DISKS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let disks = build_demo_disks(dir.path()).unwrap();
            (dir, disks)
        })
        .1
}

fn volumes(disk: &DemoDisk) -> Vec<Volume> {
    let file: Arc<dyn ReadAt> = Arc::new(std::fs::File::open(&disk.path).unwrap());
    probe(file).unwrap()
}

fn volume<'a>(vols: &'a [Volume], name: &str) -> &'a Volume {
    vols.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no volume {name} in {vols:?}"))
}

#[test]
fn probe_finds_partitions_lvs_and_file_systems() {
    let root = volumes(&demo().linux_root);
    let names: Vec<_> = root.iter().map(|v| (v.name.as_str(), v.content.clone())).collect();
    assert_eq!(names, [("p1", Content::FileSystem(FsType::Ext)), ("p5", Content::Swap)]);
    for (v, m) in root.iter().zip(&demo().linux_root.manifest.volumes) {
        assert_eq!((v.offset, v.size), (Some(m.offset), m.size), "{}", v.name);
    }

    let data = volumes(&demo().linux_data);
    let names: Vec<_> = data.iter().map(|v| (v.name.as_str(), v.content.clone(), v.size)).collect();
    assert_eq!(
        names,
        [
            ("disk", Content::LvmPhysicalVolume, 512 << 20),
            ("vgdata/home", Content::FileSystem(FsType::Ext), 128 << 20),
            ("vgdata/srv", Content::FileSystem(FsType::Xfs), 300 << 20),
        ]
    );

    let win = volumes(&demo().windows);
    let names: Vec<_> = win.iter().map(|v| (v.name.as_str(), v.content.clone())).collect();
    assert_eq!(names, [("p1", Content::FileSystem(FsType::Fat)), ("p2", Content::FileSystem(FsType::Ntfs))]);
    assert!(win[0].description.contains("EFI system"), "{}", win[0].description);
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Checks listing metadata and an extraction of the whole file system against the manifest.
fn check_volume(fs: &dyn FileSystem, manifest: &FsManifest, label: &str) {
    // Every manifest path is found by walking (file systems may add their own, like
    // lost+found), with the same kind, size, mode, mtime and target.
    let walked: Vec<_> = fs.walk("/").collect::<Result<_, _>>().unwrap();
    let by_path: std::collections::HashMap<_, _> = walked.iter().map(|e| (e.path.as_str(), e)).collect();
    for m in &manifest.files {
        let e = by_path.get(m.path.as_str()).unwrap_or_else(|| panic!("{label}: {} not listed", m.path));
        let kind = match m.kind {
            Kind::File => EntryKind::File,
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink => EntryKind::Symlink,
        };
        assert_eq!(e.kind, kind, "{label}: {}", m.path);
        if m.kind != Kind::Dir {
            assert_eq!(e.size, m.size, "{label}: size of {}", m.path);
        }
        if let Some(mode) = m.mode {
            assert_eq!(e.mode, mode, "{label}: mode of {}", m.path);
        }
        if let Some(mtime) = m.mtime {
            assert_eq!(e.mtime, mtime, "{label}: mtime of {}", m.path);
        }
        assert_eq!(e.symlink_target, m.target, "{label}: target of {}", m.path);
        assert_eq!(fs.stat(&m.path).unwrap(), **e, "{label}: stat of {}", m.path);
    }

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("root");
    let stats = fs.extract("/", &dest).unwrap();
    let files = manifest.files.iter().filter(|f| f.kind == Kind::File).count() as u64;
    assert!(stats.files >= files, "{label}: {stats:?}");
    for m in &manifest.files {
        let local = dest.join(m.path.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&local).unwrap_or_else(|e| panic!("{label}: {}: {e}", m.path));
        match m.kind {
            Kind::File => {
                assert_eq!(meta.len(), m.size, "{label}: {}", m.path);
                assert_eq!(Some(sha256_file(&local)), m.sha256, "{label}: content of {}", m.path);
            }
            Kind::Dir => assert!(meta.is_dir(), "{label}: {}", m.path),
            Kind::Symlink => {
                let target = std::fs::read_link(&local).unwrap();
                assert_eq!(target.to_str(), m.target.as_deref(), "{label}: {}", m.path);
                continue;
            }
        }
        if let Some(mode) = m.mode {
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "{label}: extracted mode of {}", m.path);
        }
        if let Some(mtime) = m.mtime {
            assert_eq!(meta.mtime(), mtime, "{label}: extracted mtime of {}", m.path);
        }
    }
}

fn check_disk(disk: &DemoDisk) {
    let vols = volumes(disk);
    for m in &disk.manifest.volumes {
        let Some(fs_manifest) = &m.fs else { continue };
        let fs = volume(&vols, &m.name).open().unwrap();
        check_volume(&*fs, fs_manifest, &format!("{}:{}", disk.path.display(), m.name));
    }
}

#[test]
fn linux_root_ext4_extracts_identically() {
    check_disk(&demo().linux_root);
}

#[test]
fn linux_data_lvm_ext4_and_xfs_extract_identically() {
    check_disk(&demo().linux_data);
}

#[test]
fn windows_fat32_and_ntfs_extract_identically() {
    check_disk(&demo().windows);
}

#[test]
fn sparse_file_extracts_as_sparse() {
    let vols = volumes(&demo().linux_root);
    let fs = volume(&vols, "p1").open().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("sparse.img");
    fs.extract("/var/log/sparse.img", &dest).unwrap();
    let meta = std::fs::metadata(&dest).unwrap();
    assert_eq!(meta.len(), 16 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "{} bytes allocated", meta.blocks() * 512);
}

#[test]
fn find_read_and_errors() {
    let vols = volumes(&demo().linux_root);
    let fs = volume(&vols, "p1").open().unwrap();
    let hits: BTreeSet<_> = fs.find("/home/**/*.txt").unwrap().into_iter().map(|e| e.path).collect();
    assert!(hits.contains("/home/alice/My Documents/résumé 2024.txt"), "{hits:?}");
    assert!(hits.contains("/home/bob/日本語のファイル.txt"), "{hits:?}");
    let by_name = fs.find("deep file.txt").unwrap();
    assert_eq!(by_name.len(), 1);
    assert_eq!(fs.read("/etc/hostname").unwrap(), b"demo-linux\n");
    assert_eq!(fs.read("etc/../etc/hostname").unwrap(), b"demo-linux\n");

    assert!(matches!(fs.stat("/etc/nope"), Err(Error::NotFound(_))));
    assert!(matches!(fs.list("/etc/hostname"), Err(Error::NotADirectory(_))));
    assert!(matches!(fs.open("/etc"), Err(Error::NotAFile(_))));

    let win = volumes(&demo().windows);
    let ntfs = volume(&win, "p2").open().unwrap();
    assert!(matches!(ntfs.stat("/Users/nobody"), Err(Error::NotFound(_))));
    // NTFS names are case-insensitive; the stored case is reported.
    assert_eq!(ntfs.stat("/users/jane doe").unwrap().path, "/Users/Jane Doe");
    let xfs_vols = volumes(&demo().linux_data);
    let xfs = volume(&xfs_vols, "vgdata/srv").open().unwrap();
    assert_eq!(xfs.list("/logs").unwrap().len(), 2000);
    assert!(matches!(xfs.stat("/www/index.html/x"), Err(Error::NotADirectory(_))));
}

/// A source with some bytes replaced, to corrupt metadata without copying images.
struct Patched {
    inner: Arc<dyn ReadAt>,
    patches: Vec<(u64, Vec<u8>)>,
}

impl ReadAt for Patched {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        for (at, bytes) in &self.patches {
            for (i, b) in bytes.iter().enumerate() {
                let pos = at + i as u64;
                if pos >= offset && pos < offset + n as u64 {
                    buf[(pos - offset) as usize] = *b;
                }
            }
        }
        Ok(n)
    }
}

fn patched(inner: Arc<dyn ReadAt>, patches: &[(u64, &[u8])]) -> Arc<dyn ReadAt> {
    Arc::new(Patched { inner, patches: patches.iter().map(|(o, b)| (*o, b.to_vec())).collect() })
}

/// The four file system volumes of the demo disks.
fn fs_volumes() -> Vec<(FsType, Arc<dyn ReadAt>)> {
    let d = demo();
    [(&d.linux_root, "p1"), (&d.linux_data, "vgdata/srv"), (&d.windows, "p1"), (&d.windows, "p2")]
        .into_iter()
        .map(|(disk, name)| {
            let vols = volumes(disk);
            let v = volume(&vols, name);
            let Content::FileSystem(t) = v.content else { panic!("{name}") };
            (t, v.source().unwrap())
        })
        .collect()
}

#[test]
fn corrupt_superblocks_give_clean_errors() {
    for (t, src) in fs_volumes() {
        // Signature gone: nothing recognisable.
        let (magic_at, magic): (u64, &[u8]) = match t {
            FsType::Ext => (1080, &[0, 0]),
            FsType::Xfs => (0, b"XXXX"),
            FsType::Ntfs => (3, b"XXXX"),
            FsType::Fat => (54, b"XXXXX\0\0\0XXXXX"),
        };
        let err = xenvault_fsread::open_fs(patched(src.clone(), &[(magic_at, magic), (82, b"XXXXX")])).err();
        assert!(matches!(err, Some(Error::UnknownFileSystem)), "{t}: {err:?}");

        // Signature intact, geometry nonsense.
        let geometry: &[(u64, &[u8])] = match t {
            FsType::Ext => &[(1024 + 24, &[40, 0, 0, 0])], // log block size
            FsType::Xfs => &[(4, &[0, 0, 0, 3])],          // block size 3
            FsType::Ntfs => &[(11, &[3, 0])],              // bytes per sector 3
            FsType::Fat => &[(14, &[0, 0]), (36, &[0xff, 0xff, 0xff, 0x7f])], // reserved sectors, FAT size
        };
        let err = xenvault_fsread::open_fs(patched(src.clone(), geometry)).err();
        assert!(matches!(err, Some(Error::Corrupt { .. } | Error::Unsupported(_))), "{t}: {err:?}");
        eprintln!("{t}: {}", err.map(|e| e.to_string()).unwrap_or_default());
    }
}

/// Random bytes over metadata blocks: every outcome is fine except a panic or a hang.
#[test]
fn garbage_metadata_never_panics() {
    for (t, src) in fs_volumes() {
        for seed in 0..12u64 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            // Keep the first 4 KiB mostly (so the type is still detected), trash blocks
            // in the first 4 MiB where superblocks, inodes, MFT and directories live.
            let patches: Vec<(u64, Vec<u8>)> = (0..24)
                .map(|_| {
                    let at = 4096 + next() % (4 << 20);
                    let len = 16 + (next() % 512) as usize;
                    (at, (0..len).map(|_| next() as u8).collect())
                })
                .collect();
            let src: Arc<dyn ReadAt> = Arc::new(Patched { inner: src.clone(), patches });
            let Ok(fs) = xenvault_fsread::open_fs(src) else { continue };
            let mut buf = vec![0; 65536];
            for e in fs.walk("/").take(3000) {
                let Ok(e) = e else { continue };
                if e.kind == EntryKind::File {
                    let _ = fs.read_at(&e, 0, &mut buf);
                }
            }
            let _ = t;
        }
    }
}

#[test]
fn corrupt_tables_and_lvm_metadata_give_errors() {
    let disk = |d: &DemoDisk| -> Arc<dyn ReadAt> { Arc::new(std::fs::File::open(&d.path).unwrap()) };
    // GPT header checksum.
    let err = probe(patched(disk(&demo().windows), &[(512 + 40, &[1])])).unwrap_err();
    assert!(err.to_string().contains("GPT header"), "{err}");
    // MBR partition running past the end of the disk.
    let err = probe(patched(disk(&demo().linux_root), &[(446 + 12, &[0xff, 0xff, 0xff, 0x7f])])).unwrap_err();
    assert!(err.to_string().contains("past the disk"), "{err}");
    // LVM metadata text changed: its checksum no longer matches.
    let err = probe(patched(disk(&demo().linux_data), &[(4096 + 512 + 2, b"X")])).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // A volume without a file system.
    let vols = volumes(&demo().linux_root);
    assert!(matches!(volume(&vols, "p5").open(), Err(Error::UnknownFileSystem)));
}

#[test]
fn fat12_and_fat16_and_bare_ext4_images() {
    use xenvault_fixtures::{Tree, ext4_image, fat_image};
    let mut tree = Tree::new();
    tree.file("a/b c/ñame long.txt", "small\n", 0o644, 1_600_000_000)
        .file("big.bin", xenvault_fixtures::Content::random(7, "big", 300_001), 0o644, 1_600_000_002)
        .file("a/empty", "", 0o644, 1_600_000_004);
    let dir = tempfile::tempdir().unwrap();
    for (bits, size) in [(12u8, 4u64 << 20), (16, 20 << 20)] {
        let img = dir.path().join(format!("fat{bits}"));
        let manifest = fat_image(&img, size, Some(bits), &tree).unwrap();
        let fs = xenvault_fsread::open_fs(Arc::new(std::fs::File::open(&img).unwrap())).unwrap();
        check_volume(&*fs, &manifest, &format!("FAT{bits}"));
    }
    // A file system filling the whole disk (no partition table) is volume "disk".
    let img = dir.path().join("ext4");
    let manifest = ext4_image(&img, 8 << 20, &tree).unwrap();
    let vols = probe(Arc::new(std::fs::File::open(&img).unwrap())).unwrap();
    assert_eq!(vols.len(), 1);
    check_volume(&*volume(&vols, "disk").open().unwrap(), &manifest, "bare ext4");
}
