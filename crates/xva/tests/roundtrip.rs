//! XVAs we write, read back by our reader and by independent tools (GNU tar, Debian's
//! xva-img, Python tarfile + xxhash), and hostile archives our reader must refuse.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read};
use std::process::Command;
use std::time::Duration;

use xenvault_xapi_wire::Value;
use xenvault_xva::{
    CHUNK_SIZE, ChecksumKind, Compression, Compressor, Error, OvaObject, OvaVersion, WriterOptions, XvaReader,
    XvaWriter, decompress, ova_xml,
};

const MIB: usize = CHUNK_SIZE as usize;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    xenvault_fixtures::random_bytes(seed, "xva", len)
}

/// Disks with zero regions: whole zero chunks, partly zero chunks, a zero first chunk,
/// and sizes that are not a multiple of 1 MiB.
fn test_disks() -> Vec<(String, Vec<u8>)> {
    let mut a = vec![0u8; 7 * MIB + 1536];
    a[MIB + 100..MIB + 5000].copy_from_slice(&pattern(4900, 1));
    a[4 * MIB..5 * MIB].copy_from_slice(&pattern(MIB, 2));
    let mut b = vec![0u8; 3 * MIB];
    b[..512].copy_from_slice(&pattern(512, 3));
    let c = vec![0u8; 5 * MIB + 512];
    // Ref:10 sorts before Ref:2.
    vec![("Ref:10".into(), a), ("Ref:2".into(), b), ("Ref:3".into(), c)]
}

fn version() -> OvaVersion {
    OvaVersion {
        hostname: "xenvault-sim".into(),
        date: "2026-11-23".into(),
        product_version: "8.4.0".into(),
        product_brand: "XCP-ng".into(),
        build_number: "release/yangtze/master/58".into(),
        xapi_major: 24,
        xapi_minor: 19,
        export_vsn: 2,
    }
}

fn objects(disks: &[(String, Vec<u8>)]) -> Vec<OvaObject> {
    let mut objects = vec![OvaObject {
        class: "VM".into(),
        id: "Ref:0".into(),
        snapshot: Value::Struct(BTreeMap::from([("name_label".into(), Value::from("vm <&> 1"))])),
    }];
    for (r, data) in disks {
        objects.push(OvaObject {
            class: "VDI".into(),
            id: r.clone(),
            snapshot: Value::Struct(BTreeMap::from([("virtual_size".into(), Value::Str(data.len().to_string()))])),
        });
    }
    objects
}

/// Writes the disks, feeding zero runs through `write_zeros` as a sparse source would.
fn write_xva(disks: &[(String, Vec<u8>)], options: WriterOptions, compression: Compression) -> Vec<u8> {
    let out = Compressor::new(Vec::new(), compression).unwrap();
    let mut w = XvaWriter::new(out, &ova_xml(&version(), &objects(disks)), 1_700_000_000, options).unwrap();
    for (r, data) in disks {
        w.begin_disk(r, data.len() as u64).unwrap();
        for piece in data.chunks(300_000) {
            if piece.iter().all(|&b| b == 0) {
                w.write_zeros(piece.len() as u64).unwrap();
            } else {
                w.write(piece).unwrap();
            }
        }
    }
    w.finish().unwrap().finish().unwrap()
}

/// Reads every disk back into zero-filled buffers.
fn read_xva(archive: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let (input, _) = decompress(Cursor::new(archive))?;
    let mut reader = XvaReader::new(input)?;
    assert_eq!(reader.version(), &version());
    let mut disks: Vec<(String, Vec<u8>)> =
        reader.disks().into_iter().map(|d| (d.reference, vec![0u8; d.size.unwrap() as usize])).collect();
    while let Some(chunk) = reader.next_chunk()? {
        let disk = disks.iter_mut().find(|(r, _)| r == chunk.disk).unwrap();
        let at = chunk.offset as usize;
        disk.1[at..at + chunk.data.len()].copy_from_slice(chunk.data);
    }
    Ok(disks)
}

fn member_names(archive: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(Cursor::new(archive));
    a.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn round_trip_is_byte_identical_and_skips_zero_chunks() {
    let disks = test_disks();
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let archive = write_xva(&disks, WriterOptions::default(), compression);
        let (_, detected) = decompress(Cursor::new(&archive)).unwrap();
        assert_eq!(detected, compression);
        assert_eq!(read_xva(&archive).unwrap(), disks, "{compression:?}");
    }
    let names = member_names(&write_xva(&disks, WriterOptions::default(), Compression::None));
    let chunks: Vec<&str> = names.iter().filter(|n| !n.ends_with(".xxhash")).map(String::as_str).collect();
    assert_eq!(
        chunks,
        [
            "ova.xml",
            "Ref:10/00000000",
            "Ref:10/00000001",
            "Ref:10/00000004",
            "Ref:10/00000007",
            "Ref:2/00000000",
            "Ref:2/00000002",
            "Ref:3/00000000",
            "Ref:3/00000005",
        ]
    );
}

fn python(script: &str, args: &[&std::path::Path]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn python_tarfile_and_xxhash_accept_our_archive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.xva");
    fs::write(&path, write_xva(&test_disks(), WriterOptions::default(), Compression::None)).unwrap();
    let script = r#"
import sys, tarfile, xxhash
members = {}
with tarfile.open(sys.argv[1]) as t:
    infos = t.getmembers()
    assert infos[0].name == "ova.xml", infos[0].name
    assert infos[0].mtime == 1700000000
    for m in infos:
        assert m.mode == 0o400 and m.uid == 0 and m.gid == 0 and m.isreg(), m
        members[m.name] = t.extractfile(m).read()
checked = 0
for name, data in members.items():
    if name.endswith(".xxhash"):
        assert data.decode() == xxhash.xxh64(members[name[:-7]]).hexdigest().upper(), name
        checked += 1
assert members["ova.xml"].startswith(b"<value><struct><member><name>version</name>")
# ocaml-tar's V7 header, as xapi writes it: no ustar magic, NUL type flag, 7-digit fields.
raw = open(sys.argv[1], "rb").read(512)
assert raw[100:108] == b"0000400\0" and raw[108:124] == b"0000000\0" * 2, raw[100:124]
assert raw[136:148] == b"%011o\0" % 1700000000 and raw[156:157] == b"\0", raw[136:157]
assert raw[148:155].isdigit() and raw[155:156] == b"\0" and raw[257:265] == bytes(8), raw[148:265]
print(checked)
"#;
    assert_eq!(python(script, &[&path]).trim(), "8");
}

#[test]
fn xva_img_exports_our_disks_from_checksum_files() {
    let dir = tempfile::tempdir().unwrap();
    let disks = test_disks();
    let options = WriterOptions { checksum: ChecksumKind::Sha1, ..WriterOptions::default() };
    let archive = write_xva(&disks, options, Compression::None);
    let xva = dir.path().join("vm.xva");
    fs::write(&xva, &archive).unwrap();
    let unpacked = dir.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar").arg("-xf").arg(&xva).arg("-C").arg(&unpacked).status().unwrap();
    assert!(tar.success());
    for (reference, data) in &disks {
        let out = dir.path().join(format!("{reference}.raw"));
        let status = Command::new("xva-img")
            .arg("-s")
            .arg("disk-export")
            .arg(unpacked.join(reference))
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        assert_eq!(&fs::read(&out).unwrap(), data, "{reference}");
    }
}

#[test]
fn corrupt_checksum_is_rejected() {
    let disks = test_disks();
    let mut archive = write_xva(&disks, WriterOptions::default(), Compression::None);
    // Flip one byte of data inside Ref:10/00000004 (a data chunk, not a header).
    let name = b"Ref:10/00000004\0";
    let header = archive.windows(name.len()).position(|w| w == name).unwrap();
    archive[header + 512 + 1000] ^= 0x40;
    match read_xva(&archive) {
        Err(Error::ChecksumMismatch { name, .. }) => assert_eq!(name, "Ref:10/00000004"),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
}

#[test]
fn keepalive_chunks_are_accepted_both_ways() {
    let disks = test_disks();
    // xapi's way: a zero keep-alive limit sends one before every middle chunk, and the
    // chunk after each keep-alive takes the following name.
    let options = WriterOptions { keepalive: Some(Duration::ZERO), ..WriterOptions::default() };
    let archive = write_xva(&disks, options, Compression::None);
    let names = member_names(&archive);
    assert!(names.contains(&"Ref:10/00000002".to_string()), "{names:?}");
    assert_eq!(read_xva(&archive).unwrap(), disks);

    // The other way: an empty chunk, then the real one under the same name.
    let data = pattern(2 * MIB + 4096, 9);
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("Ref:1/00000000", data[..MIB].to_vec()),
        ("Ref:1/00000001", Vec::new()),
        ("Ref:1/00000001", data[MIB..2 * MIB].to_vec()),
        ("Ref:1/00000002", data[2 * MIB..].to_vec()),
    ];
    let archive = hand_made(&[("Ref:1", data.len())], &entries, ChecksumKind::Xxhash);
    assert_eq!(read_xva(&archive).unwrap(), vec![("Ref:1".to_string(), data)]);
}

/// An archive built with the tar crate's own (GNU) headers, chunk by chunk.
fn hand_made(disks: &[(&str, usize)], chunks: &[(&str, Vec<u8>)], kind: ChecksumKind) -> Vec<u8> {
    let objects: Vec<OvaObject> = disks
        .iter()
        .map(|(r, size)| OvaObject {
            class: "VDI".into(),
            id: (*r).into(),
            snapshot: Value::Struct(BTreeMap::from([("virtual_size".into(), Value::Str(size.to_string()))])),
        })
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o400);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("ova.xml", ova_xml(&version(), &objects).as_bytes());
    for (name, data) in chunks {
        add(name, data);
        add(&format!("{name}{}", kind.extension()), kind.compute(data).as_bytes());
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_archives_give_errors() {
    // One small disk keeps the many re-reads below fast.
    let disks: Vec<_> = test_disks().into_iter().filter(|(r, _)| r == "Ref:2").collect();
    let archive = write_xva(&disks, WriterOptions::default(), Compression::None);
    // Truncation fails cleanly: inside data, at and inside every member header, and in
    // the end-of-archive blocks.
    let mut cuts: Vec<usize> = (0..archive.len()).step_by(32_771).collect();
    let mut entries = tar::Archive::new(Cursor::new(&archive));
    for e in entries.entries().unwrap() {
        let at = e.unwrap().raw_header_position() as usize;
        cuts.extend([at, at + 100, at + 512]);
    }
    cuts.extend([archive.len() - 1, archive.len() - 512, archive.len() - 1024]);
    for cut in cuts {
        assert!(read_xva(&archive[..cut]).is_err(), "cut at {cut}");
    }
    let data = pattern(2 * MIB, 4);
    let sized = [("Ref:1", data.len())];
    let chunk =
        |i: usize| (if i == 0 { "Ref:1/00000000" } else { "Ref:1/00000001" }, data[i * MIB..(i + 1) * MIB].to_vec());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("chunks out of order", hand_made(&sized, &[chunk(1), chunk(0)], ChecksumKind::Sha1)),
        ("missing last chunk", hand_made(&sized, &[chunk(0)], ChecksumKind::Sha1)),
        ("repeated chunk", hand_made(&sized, &[chunk(0), chunk(0), chunk(1)], ChecksumKind::Sha1)),
        ("unknown disk", hand_made(&[("Ref:9", 2 * MIB)], &[chunk(0), chunk(1)], ChecksumKind::Sha1)),
    ];
    for (what, archive) in cases {
        assert!(read_xva(&archive).is_err(), "{what} accepted");
    }
    // A chunk whose checksum file is missing.
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in
        [("ova.xml", ova_xml(&version(), &objects(&disks)).into_bytes()), ("Ref:2/00000000", vec![0u8; MIB])]
    {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, body.as_slice()).unwrap();
    }
    let missing = b.into_inner().unwrap();
    assert!(matches!(read_xva(&missing), Err(Error::Corrupt(m)) if m.contains("no checksum file")));
    // Not even a tar.
    let mut junk = Vec::new();
    Cursor::new(pattern(10_000, 5)).read_to_end(&mut junk).unwrap();
    assert!(read_xva(&junk).is_err());
}
