//! VHDs checked against independent implementations: qemu-img, vhdiinfo (libvhdi),
//! python3-libvhdi, and qemu-made VHDs read by our readers.

use std::fs::{self, File};
use std::io::{BufWriter, Cursor};
use std::path::Path;
use std::process::Command;

use uuid::Uuid;
use xenvault_vhd::{
    DiskType, DynamicWriter, FixedWriter, Layered, ParentInfo, RawDisk, ReadAt, VhdReader, VhdStreamReader,
    WriterOptions,
};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 2 * MIB;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    xenvault_fixtures::random_bytes(seed, "vhd", len)
}

/// A disk of `size` bytes with data in the given 2 MiB blocks and zeros elsewhere.
fn disk_with_blocks(size: u64, blocks: &[u64], seed: u64) -> Vec<u8> {
    let mut disk = vec![0u8; size as usize];
    for &b in blocks {
        let start = (b * BLOCK) as usize;
        let end = ((b + 1) * BLOCK).min(size) as usize;
        disk[start..end].copy_from_slice(&pattern(end - start, seed + b));
    }
    disk
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `disk` as a dynamic (or differencing) VHD holding the non-zero blocks (or
/// the given ones), checking the announced output size.
fn write_dynamic(path: &Path, disk: &[u8], present: &[u32], parent: Option<&ParentInfo>, uid: Uuid) {
    let size = disk.len() as u64;
    let options = WriterOptions { unique_id: uid, timestamp: 0 };
    let out = BufWriter::new(File::create(path).unwrap());
    let mut writer = match parent {
        None => DynamicWriter::dynamic(out, size, present.iter().copied(), options).unwrap(),
        Some(p) => DynamicWriter::differencing(out, size, present.iter().copied(), options, p).unwrap(),
    };
    let announced = writer.total_size();
    for &b in present {
        let start = u64::from(b) * BLOCK;
        let end = (start + BLOCK).min(size);
        writer.write_block(b, &disk[start as usize..end as usize]).unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(fs::metadata(path).unwrap().len(), announced);
    assert_eq!(announced, DynamicWriter::<File>::output_size(size, present.len() as u64));
}

fn nonzero_blocks(disk: &[u8]) -> Vec<u32> {
    disk.chunks(BLOCK as usize).enumerate().filter(|(_, c)| c.iter().any(|&b| b != 0)).map(|(i, _)| i as u32).collect()
}

/// qemu sizes `caml` VHDs by CHS geometry unless told to use the footer's size.
fn qemu_compare(vhd: &Path, raw: &Path) {
    run(Command::new("qemu-img")
        .args(["compare", "-q", "--image-opts"])
        .arg(format!("driver=vpc,force_size_calc=current_size,file.driver=file,file.filename={}", vhd.display()))
        .arg(format!("driver=raw,file.driver=file,file.filename={}", raw.display())));
}

fn read_all(r: &mut impl ReadAt, size: u64) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    // Odd-sized pieces exercise partial sectors and block boundaries.
    let piece = 3 * 1000 * 1000 + 7;
    let mut pos = 0;
    while pos < size {
        let n = piece.min(size - pos);
        r.read_exact_at(pos, &mut out[pos as usize..(pos + n) as usize]).unwrap();
        pos += n;
    }
    out
}

fn stream_all(file: &Path) -> Vec<u8> {
    let mut s = VhdStreamReader::new(File::open(file).unwrap()).unwrap();
    let mut out = vec![0u8; s.disk_size() as usize];
    let mut last_end = 0;
    while let Some(e) = s.next_extent().unwrap() {
        assert!(e.offset >= last_end, "extents go forward");
        last_end = e.offset + e.data.len() as u64;
        out[e.offset as usize..last_end as usize].copy_from_slice(e.data);
    }
    out
}

#[test]
fn dynamic_vhd_we_write_reads_back_in_qemu_vhdiinfo_and_our_readers() {
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of 2 MiB nor of the CHS geometry: the last block is partial.
    let size = 9 * MIB + 3 * 512;
    let disk = disk_with_blocks(size, &[0, 2, 4], 1);
    let raw = dir.path().join("disk.raw");
    let vhd = dir.path().join("disk.vhd");
    fs::write(&raw, &disk).unwrap();
    write_dynamic(&vhd, &disk, &nonzero_blocks(&disk), None, Uuid::new_v4());

    qemu_compare(&vhd, &raw);
    let info = run(Command::new("vhdiinfo").arg(&vhd));
    assert!(info.contains("Dynamic"), "{info}");
    assert!(info.contains(&format!("{size} bytes")), "{info}");

    let mut reader = VhdReader::open(File::open(&vhd).unwrap()).unwrap();
    assert_eq!(reader.disk_type(), DiskType::Dynamic);
    assert_eq!(&reader.footer().creator_application, b"caml");
    assert_eq!(reader.present_blocks().collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_eq!(read_all(&mut reader, size), disk);
    assert_eq!(stream_all(&vhd), disk);
}

#[test]
fn differencing_vhd_on_its_parent_equals_the_newer_disk() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB;
    let base = disk_with_blocks(size, &[0, 1, 3, 5], 10);
    let mut newer = base.clone();
    // Change part of block 1, all of block 4 (zero in base), and zero part of block 5.
    newer[(BLOCK + 4096) as usize..(BLOCK + 8192) as usize].copy_from_slice(&pattern(4096, 99));
    newer[(4 * BLOCK) as usize..(5 * BLOCK) as usize].copy_from_slice(&pattern(BLOCK as usize, 98));
    newer[(5 * BLOCK) as usize..(5 * BLOCK + MIB) as usize].fill(0);
    let changed: Vec<u32> = (0..6)
        .filter(|&b| {
            let r = (b * BLOCK) as usize..((b + 1) * BLOCK) as usize;
            base[r.clone()] != newer[r]
        })
        .map(|b| b as u32)
        .collect();
    assert_eq!(changed, vec![1, 4, 5]);

    let base_uid = Uuid::new_v4();
    let base_vhd = dir.path().join("base.vhd");
    let delta_vhd = dir.path().join("delta.vhd");
    let newer_raw = dir.path().join("newer.raw");
    let base_raw = dir.path().join("base.raw");
    fs::write(&newer_raw, &newer).unwrap();
    fs::write(&base_raw, &base).unwrap();
    write_dynamic(&base_vhd, &base, &nonzero_blocks(&base), None, base_uid);
    let parent = ParentInfo { unique_id: base_uid, timestamp: 12345, path: base_vhd.to_string_lossy().into_owned() };
    write_dynamic(&delta_vhd, &newer, &changed, Some(&parent), Uuid::new_v4());

    let info = run(Command::new("vhdiinfo").arg(&delta_vhd));
    assert!(info.contains("Differential"), "{info}");
    assert!(info.contains(&base_uid.to_string()), "{info}");

    // libvhdi applies the delta on its parent.
    let script = r#"
import sys, hashlib, pyvhdi
child, parent = pyvhdi.file(), pyvhdi.file()
child.open(sys.argv[1]); parent.open(sys.argv[2]); child.set_parent(parent)
data = child.read_buffer_at_offset(child.get_media_size(), 0)
print(hashlib.sha256(data).hexdigest())
"#;
    let digest = run(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&delta_vhd).arg(&base_vhd));
    let expected = run(Command::new("sha256sum").arg(&newer_raw));
    assert_eq!(digest.trim(), expected.split_whitespace().next().unwrap());

    // Our reader layered on the raw base, and on the base VHD.
    let delta = VhdReader::open(File::open(&delta_vhd).unwrap()).unwrap();
    assert_eq!(delta.header().unwrap().parent_unique_id, base_uid);
    let mut on_raw = Layered::new(delta, RawDisk::new(File::open(&base_raw).unwrap()).unwrap());
    assert_eq!(read_all(&mut on_raw, size), newer);
    let (delta, _) = on_raw.into_parts();
    let base_reader = VhdReader::open(File::open(&base_vhd).unwrap()).unwrap();
    let mut on_vhd = Layered::new(delta, base_reader);
    assert_eq!(read_all(&mut on_vhd, size), newer);

    // The stream of the delta carries exactly the changed blocks, in full.
    let mut s = VhdStreamReader::new(File::open(&delta_vhd).unwrap()).unwrap();
    let mut seen = Vec::new();
    while let Some(e) = s.next_extent().unwrap() {
        assert_eq!(e.data, &newer[e.offset as usize..e.offset as usize + e.data.len()]);
        seen.push((e.offset, e.data.len()));
    }
    let covered: u64 = seen.iter().map(|(_, n)| *n as u64).sum();
    assert_eq!(covered, 3 * BLOCK);
}

#[test]
fn fixed_vhd_we_write_matches_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * MIB + 512;
    let disk = disk_with_blocks(size, &[0, 2], 3);
    let raw = dir.path().join("disk.raw");
    let vhd = dir.path().join("disk.vhd");
    fs::write(&raw, &disk).unwrap();
    let mut w = FixedWriter::new(File::create(&vhd).unwrap(), size, WriterOptions::default()).unwrap();
    std::io::copy(&mut Cursor::new(&disk), &mut w).unwrap();
    w.finish().unwrap();
    assert_eq!(fs::metadata(&vhd).unwrap().len(), FixedWriter::<File>::output_size(size));
    qemu_compare(&vhd, &raw);
    let info = run(Command::new("vhdiinfo").arg(&vhd));
    assert!(info.contains("Fixed"), "{info}");
    let mut reader = VhdReader::open(File::open(&vhd).unwrap()).unwrap();
    assert_eq!(read_all(&mut reader, size), disk);
}

#[test]
fn qemu_made_vhds_read_byte_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let size = 11 * MIB;
    let mut disk = disk_with_blocks(size, &[1, 3, 5], 7);
    // A block only partly written: qemu allocates it whole.
    disk[(4 * BLOCK + 512) as usize..(4 * BLOCK + 1024) as usize].copy_from_slice(&pattern(512, 5));
    let raw = dir.path().join("disk.raw");
    fs::write(&raw, &disk).unwrap();
    for subformat in ["dynamic", "fixed"] {
        let vhd = dir.path().join(format!("{subformat}.vhd"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o"])
            .arg(format!("subformat={subformat},force_size=on"))
            .arg(&raw)
            .arg(&vhd));
        let mut reader = VhdReader::open(File::open(&vhd).unwrap()).unwrap();
        assert_eq!(reader.disk_size(), size, "{subformat}");
        assert_eq!(read_all(&mut reader, size), disk, "{subformat}");
        if subformat == "dynamic" {
            assert_eq!(stream_all(&vhd), disk);
        }
    }
}

#[test]
fn differencing_vhd_larger_than_its_parent_reads_zeros_past_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let base = disk_with_blocks(4 * MIB, &[0, 1], 20);
    // The disk grew to 10 MiB after the base: block 3 written, block 4 never.
    let mut newer = disk_with_blocks(10 * MIB, &[0, 1, 3], 20);
    newer[..4096].copy_from_slice(&pattern(4096, 21));
    let base_raw = dir.path().join("base.raw");
    let delta_vhd = dir.path().join("delta.vhd");
    fs::write(&base_raw, &base).unwrap();
    let parent = ParentInfo { unique_id: Uuid::new_v4(), timestamp: 0, path: "/base.vhd".into() };
    write_dynamic(&delta_vhd, &newer, &[0, 3], Some(&parent), Uuid::new_v4());
    let delta = VhdReader::open(File::open(&delta_vhd).unwrap()).unwrap();
    let mut layered = Layered::new(delta, RawDisk::new(File::open(&base_raw).unwrap()).unwrap());
    assert_eq!(read_all(&mut layered, 10 * MIB), newer);
}

type SectorChoice = [(u32, Vec<std::ops::Range<u32>>)];

/// A delta over a base and a dynamic disk, both holding only the `chosen` sectors (the
/// data carried for every other sector is garbage): the VHDs and the raw images they
/// must read as.
struct PartialCase {
    size: u64,
    base: Vec<u8>,
    newer: Vec<u8>,
    dynamic: Vec<u8>,
    garbage: Vec<u8>,
    base_vhd: std::path::PathBuf,
    delta_vhd: std::path::PathBuf,
    dynamic_vhd: std::path::PathBuf,
    covered: u64,
}

fn partial_case(dir: &Path, size: u64, chosen: &SectorChoice) -> PartialCase {
    let blocks: Vec<u64> = (0..size.div_ceil(BLOCK)).collect();
    let base = disk_with_blocks(size, &blocks, 30);
    let garbage = pattern(size as usize, 31);
    let mut newer = base.clone();
    let mut dynamic = vec![0u8; size as usize];
    let mut covered = 0;
    for (block, ranges) in chosen {
        let mut sectors: Vec<u32> = ranges.iter().flat_map(|r| r.clone()).collect();
        sectors.sort_unstable();
        sectors.dedup();
        covered += sectors.len() as u64 * 512;
        for s in sectors {
            let at = (u64::from(*block) * BLOCK + u64::from(s) * 512) as usize;
            newer[at..at + 512].copy_from_slice(&garbage[at..at + 512]);
            dynamic[at..at + 512].copy_from_slice(&garbage[at..at + 512]);
        }
    }
    let write = |path: &Path, parent: Option<&ParentInfo>| {
        let present = chosen.iter().map(|(b, _)| *b);
        let out = BufWriter::new(File::create(path).unwrap());
        let options = WriterOptions::default();
        let mut w = match parent {
            None => DynamicWriter::dynamic(out, size, present, options).unwrap(),
            Some(p) => DynamicWriter::differencing(out, size, present, options, p).unwrap(),
        };
        let mut written = 0;
        for (block, ranges) in chosen {
            let start = u64::from(*block) * BLOCK;
            let end = (start + BLOCK).min(size);
            written += w.write_block_sectors(*block, &garbage[start as usize..end as usize], ranges).unwrap();
        }
        let announced = w.total_size();
        w.finish().unwrap();
        assert_eq!(fs::metadata(path).unwrap().len(), announced);
        assert_eq!(written, covered);
    };
    let base_uid = Uuid::new_v4();
    let (base_vhd, delta_vhd, dynamic_vhd) = (dir.join("base.vhd"), dir.join("delta.vhd"), dir.join("dynamic.vhd"));
    write_dynamic(&base_vhd, &base, &nonzero_blocks(&base), None, base_uid);
    let parent = ParentInfo { unique_id: base_uid, timestamp: 0, path: base_vhd.to_string_lossy().into_owned() };
    write(&delta_vhd, Some(&parent));
    write(&dynamic_vhd, None);
    PartialCase { size, base, newer, dynamic, garbage, base_vhd, delta_vhd, dynamic_vhd, covered }
}

/// Our readers see the chosen sectors and nothing else; the stream reader (what the
/// simulator's import applies, as xapi's vhd-tool does) yields exactly them.
fn check_with_our_readers(case: &PartialCase) {
    let delta = VhdReader::open(File::open(&case.delta_vhd).unwrap()).unwrap();
    let base = VhdReader::open(File::open(&case.base_vhd).unwrap()).unwrap();
    assert_eq!(read_all(&mut Layered::new(delta, base), case.size), case.newer);
    let mut dynamic = VhdReader::open(File::open(&case.dynamic_vhd).unwrap()).unwrap();
    assert_eq!(read_all(&mut dynamic, case.size), case.dynamic);
    let mut s = VhdStreamReader::new(File::open(&case.delta_vhd).unwrap()).unwrap();
    let mut streamed = 0;
    while let Some(e) = s.next_extent().unwrap() {
        let at = e.offset as usize;
        assert_eq!(e.data, &case.garbage[at..at + e.data.len()]);
        streamed += e.data.len() as u64;
    }
    assert_eq!(streamed, case.covered);
    assert_ne!(case.newer, case.base);
}

/// Blocks written with partial sector bitmaps hold only the chosen sectors, checked with
/// libvhdi. libvhdi 20210425 misreads a clear bit that follows a set bit in the same
/// bitmap byte (it shifts without masking), so here the ranges are whole bitmap bytes
/// (8 sectors, a guest's 4 KiB page); the next test goes down to single sectors.
#[test]
fn partial_sector_bitmaps_read_in_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    // The last block is partial: 5 MiB + 3 sectors, its bitmap ends inside a byte.
    let size = 5 * MIB + 3 * 512;
    let chosen = [(0, vec![0..8, 16..32, 24..40]), (2, vec![2040..2048, 2048..2051])];
    let case = partial_case(dir.path(), size, &chosen);
    let script = r#"
import sys, hashlib, pyvhdi
child = pyvhdi.file(); child.open(sys.argv[1])
if len(sys.argv) > 2:
    parent = pyvhdi.file(); parent.open(sys.argv[2]); child.set_parent(parent)
print(hashlib.sha256(child.read_buffer_at_offset(child.get_media_size(), 0)).hexdigest())
"#;
    let sha = |data: &[u8]| {
        let path = dir.path().join("expected.raw");
        fs::write(&path, data).unwrap();
        let out = run(Command::new("sha256sum").arg(&path));
        out.split_whitespace().next().unwrap().to_owned()
    };
    let layered = run(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&case.delta_vhd).arg(&case.base_vhd));
    assert_eq!(layered.trim(), sha(&case.newer));
    let alone = run(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&case.dynamic_vhd));
    assert_eq!(alone.trim(), sha(&case.dynamic));
    check_with_our_readers(&case);
}

#[test]
fn partial_sector_bitmaps_hold_single_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * MIB + 3 * 512;
    let chosen = [(0, vec![3..4, 9..11, 10..12, 4095..4096]), (2, vec![0..1, 2050..2051])];
    let case = partial_case(dir.path(), size, &chosen);
    assert_eq!(case.covered, (1 + 3 + 1 + 1 + 1) * 512);
    check_with_our_readers(&case);
}

#[test]
fn sector_ranges_outside_the_block_are_refused() {
    let size = 2 * BLOCK + 4 * 512;
    let mut w = DynamicWriter::dynamic(Vec::new(), size, [0, 2], WriterOptions::default()).unwrap();
    let block = vec![0u8; BLOCK as usize];
    let sectors = |r: std::ops::Range<u32>| vec![r];
    assert!(w.write_block_sectors(0, &block, &sectors(4096..4097)).is_err());
    assert!(w.write_block_sectors(0, &block, &sectors(0..4096)).is_ok());
    // The last block has 4 sectors on the disk.
    assert!(w.write_block_sectors(2, &[0u8; 2048], &sectors(3..5)).is_err());
    assert!(w.write_block_sectors(2, &[0u8; 2048], &sectors(3..4)).is_ok());
    assert!(w.finish().is_ok());
}
