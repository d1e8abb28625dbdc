//! Writes the seed corpora under `fuzz/corpus/<target>/`: real file systems and disks made
//! by the fixtures crate, a real pack, key slots, a config and a manifest, and a few wire
//! messages. File-system images keep only the bytes the readers read (the rest is zeroed
//! and trailing zeros are cut, since the targets read zeros past the input).
//!
//! `cargo run -p xenvault-fuzzing --example make_corpus [fs|repo|wire]...` (needs the
//! fixtures' tools).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use xenvault_fixtures::{Content, GPT_MS_BASIC_DATA, GptPart, LvSpec, MbrPart, Tree};
use xenvault_fsread::ReadAt;
use xenvault_fuzzing::{fsread, repo};
use xenvault_repo::Secret;
use xenvault_repo::keys::{KdfParams, KeySlot};
use xenvault_repo::pack::{PackBuilder, chunk_aad};

const MIB: u64 = 1 << 20;
const MTIME: i64 = 1_700_000_000;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Fallible {
    // Arguments pick groups (fs, repo, wire): regenerating all rewrites every image.
    let groups: Vec<String> = std::env::args().skip(1).collect();
    let wants = |group: &str| groups.is_empty() || groups.iter().any(|g| g == group);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let work = tempfile::tempdir()?;
    if wants("fs") {
        file_systems(&corpus.join("fs_volume"), &corpus.join("fs_disk"), work.path())?;
    }
    if wants("repo") {
        repository(&corpus)?;
    }
    if wants("wire") {
        wire(&corpus, work.path())?;
    }
    Ok(())
}

/// A small tree with the shapes readers branch on: nested and larger directories, empty,
/// small and multi-block files, a symlink.
fn tree() -> Tree {
    let mut t = Tree::new();
    t.dir("etc", 0o755, MTIME).file("etc/hostname", "fuzz\n", 0o644, MTIME);
    t.dir("home", 0o755, MTIME).dir("home/user", 0o700, MTIME);
    t.file("home/user/empty", "", 0o600, MTIME);
    t.file("home/user/blocks.bin", Content::random(1, "blocks", 20_000), 0o644, MTIME);
    t.dir("many", 0o755, MTIME);
    for i in 0..40 {
        t.file(&format!("many/file-with-a-longer-name-{i:02}"), "x", 0o644, MTIME);
    }
    t.symlink("etc/link", "hostname");
    t
}

fn file_systems(volumes: &Path, disks: &Path, work: &Path) -> Fallible {
    let t = tree();
    let img = |name: &str| work.join(name);
    xenvault_fixtures::ext4_image(&img("ext4"), 2 * MIB, &t)?;
    xenvault_fixtures::fat_image(&img("fat12"), 2 * MIB, Some(12), &t)?;
    xenvault_fixtures::fat_image(&img("fat16"), 16 * MIB, Some(16), &t)?;
    xenvault_fixtures::ntfs_image(&img("ntfs"), 8 * MIB, &t)?;
    small_xfs(&img("xfs"), work)?;
    for name in ["ext4", "fat12", "fat16", "ntfs", "xfs"] {
        seed(&img(name), &volumes.join(name), false)?;
    }
    let mbr = [
        MbrPart { size: 2 * MIB, type_id: 0x01, bootable: true, logical: false, image: Some(img("fat12")) },
        MbrPart { size: 2 * MIB, type_id: 0x01, bootable: false, logical: true, image: Some(img("fat12")) },
    ];
    // FAT partitions (and ext4 in the LV) keep the seeds, cut after the last block read, small.
    xenvault_fixtures::mbr_disk(&img("mbr"), 16 * MIB, &mbr)?;
    let gpt = [GptPart {
        size: 2 * MIB,
        type_guid: GPT_MS_BASIC_DATA.into(),
        name: "data".into(),
        image: Some(img("fat12")),
    }];
    xenvault_fixtures::gpt_disk(&img("gpt"), 16 * MIB, &gpt)?;
    let lvs = [LvSpec { name: "root".into(), size: 4 * MIB, segments: 1, image: Some(img("ext4")) }];
    xenvault_fixtures::lvm_disk(&img("lvm"), 16 * MIB, "vg0", &lvs)?;
    for name in ["mbr", "gpt", "lvm"] {
        seed(&img(name), &disks.join(name), true)?;
    }
    Ok(())
}

/// The fixtures' XFS is 300 MiB (mkfs.xfs's minimum) over four allocation groups; the
/// variables below are xfsprogs' test-suite escape from that minimum, so this one has two
/// groups of 16 MiB. New directories rotate between groups and the second group's
/// start holds the log, so the tree is flat (one directory in block form) and the seed,
/// cut after the last block read, stays small.
fn small_xfs(path: &Path, work: &Path) -> Fallible {
    let file = |name: &str, content: &[u8]| -> Fallible<String> {
        let src = work.join(format!("xfs-src-{name}"));
        std::fs::write(&src, content)?;
        Ok(format!("{name} ---644 0 0 {}\n", src.display()))
    };
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    proto += &file("empty", b"")?;
    proto += &file("blocks.bin", &(0..20_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>())?;
    proto += "link l--777 0 0 hostname\n";
    for i in 0..40 {
        proto += &file(&format!("file-with-a-longer-name-{i:02}"), b"x")?;
    }
    proto += &file("hostname", b"fuzz\n")?;
    proto += "$\n";
    let proto_path = work.join("xfs.proto");
    std::fs::write(&proto_path, proto)?;
    std::fs::File::create(path)?.set_len(32 * MIB)?;
    let status = std::process::Command::new("mkfs.xfs")
        .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")])
        .args(["-q", "-f", "-d", "agcount=2", "-p"])
        .args([&proto_path, path])
        .status()?;
    if !status.success() {
        return Err("mkfs.xfs failed".into());
    }
    Ok(())
}

/// Records which 4 KiB blocks of an image the readers touch.
struct Recorder {
    data: Vec<u8>,
    touched: Mutex<Vec<bool>>,
}

const BLOCK: usize = 4096;

impl ReadAt for Recorder {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read_at(offset, buf)?;
        let start = offset as usize;
        if let Ok(mut touched) = self.touched.lock() {
            for block in start / BLOCK..(start + n).div_ceil(BLOCK) {
                touched[block] = true;
            }
        }
        Ok(n)
    }
}

/// Writes `image` minimised to the blocks the walk reads, checking it walks the same.
fn seed(image: &Path, out: &Path, whole_disk: bool) -> Fallible {
    let data = std::fs::read(image)?;
    let blocks = data.len().div_ceil(BLOCK);
    let recorder = Arc::new(Recorder { data, touched: Mutex::new(vec![false; blocks]) });
    let entries = fsread::walk_image(recorder.clone(), whole_disk);
    let touched = recorder.touched.lock().map_err(|_| "poisoned")?.clone();
    let mut kept = recorder.data.clone();
    for (block, bytes) in kept.chunks_mut(BLOCK).enumerate() {
        if !touched[block] {
            bytes.fill(0);
        }
    }
    let end = kept.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    kept.truncate(end);
    let again = fsread::walk_image(fsread::image(&kept), whole_disk);
    if entries == 0 || again != entries {
        return Err(format!("{}: {entries} entries in the image, {again} in the seed", image.display()).into());
    }
    write(out, &kept)?;
    println!("{}: {entries} entries, {} KiB", out.display(), kept.len() / 1024);
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Fallible {
    std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// A pack (as stored and as index plaintext), chunk plaintexts, key slots, a config and a
/// manifest, all readable with the targets' fixed key.
fn repository(corpus: &Path) -> Fallible {
    let crypto = repo::crypto();
    let aead = repo::aead();
    let name = repo::pack_name();
    let mut pack = PackBuilder::new(1 << 20)?;
    let chunks: [Vec<u8>; 3] =
        [b"text that compresses well, well, well, well".repeat(20), vec![1, 2, 3], (0..=255).collect()];
    for chunk in &chunks {
        let id = crypto.chunk_id(chunk);
        let sealed = crypto.seal(&chunk_aad(&id), chunk, true)?;
        if chunk.len() > 100 {
            write(&corpus.join("repo_pack/chunk-zstd"), &aead.open(&chunk_aad(&id), &sealed).ok_or("open")?)?;
        }
        pack.add(id, &sealed, chunk.len() as u32);
    }
    // The builder names its pack at random: re-seal its index for the targets' pack name.
    let (random_name, data, index, _) = pack.finish(&crypto)?;
    let plain_index = aead.open(&random_name.index_aad(), &index).ok_or("open index")?;
    let resealed = repo::seal(&name.index_aad(), &plain_index);
    let mut stored = data[..data.len() - 4 - index.len()].to_vec();
    stored.extend_from_slice(&resealed);
    stored.extend_from_slice(&(resealed.len() as u32).to_le_bytes());
    write(&corpus.join("repo_pack/pack"), &stored)?;
    write(&corpus.join("repo_pack/index-plaintext"), &plain_index)?;

    let master = repo::master();
    let cheap = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };
    let passphrase = KeySlot::create(&master, &Secret::passphrase("fuzz"), cheap, "seed")?;
    let key_file = KeySlot::create(&master, &Secret::key_file(b"fuzz key file".to_vec()), cheap, "seed")?;
    write(&corpus.join("repo_keys/slot-passphrase"), &serde_json::to_vec_pretty(&passphrase)?)?;
    write(&corpus.join("repo_keys/slot-key-file"), &serde_json::to_vec_pretty(&key_file)?)?;
    let config = serde_json::json!({
        "version": 1, "id": "fuzz", "created": "2026-01-01T00:00:00Z", "encryption": "none",
        "chunk_size": 262144, "page_slots": 1024, "pack_size": 16777216, "zstd_level": 1,
        "plain_master": hex::encode(master.to_bytes()),
    });
    write(&corpus.join("repo_keys/config"), &serde_json::to_vec_pretty(&config)?)?;

    let disk = serde_json::json!({
        "position": 0, "name": "xvda", "uuid": "", "size": 10485760, "chunk_size": 262144,
        "page_slots": 1024, "pages": ["11".repeat(32)],
        "stats": {"bytes_read": 10485760, "bytes_zero": 0, "bytes_new": 1, "bytes_stored": 1,
                  "chunks_new": 40, "chunks_reused": 0, "chunks_inherited": 0},
        "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z",
    });
    let manifest = serde_json::json!({
        "version": 1, "id": "fuzz", "time": "2026-01-01T00:00:00Z",
        "source": {"id": "vm", "type": "vm", "name": "web01"}, "metadata": {}, "tags": ["daily"],
        "disks": [disk], "finished": "2026-01-01T00:00:01Z",
    });
    // Flag byte 0: stored raw (the targets seal the input as it is).
    let mut raw = vec![0u8];
    raw.extend_from_slice(&serde_json::to_vec_pretty(&manifest)?);
    write(&corpus.join("repo_manifest/manifest"), &raw)?;
    Ok(())
}

/// XML-RPC and JSON-RPC calls and responses, a CBT bitmap, a dynamic VHD (by qemu-img), an XVA and NBD conversations.
fn wire(corpus: &Path, work: &Path) -> Fallible {
    use xenvault_xapi_wire::{Value, xmlrpc};
    let session = Value::Str("OpaqueRef:0f0e".into());
    let record =
        Value::Struct([("uuid".into(), Value::Str("a-b".into())), ("size".into(), Value::Int(1 << 30))].into());
    write(
        &corpus.join("xmlrpc/call"),
        xmlrpc::encode_call("VM.get_record", &[session, Value::Array(vec![Value::Bool(true), Value::Double(1.5)])])
            .as_bytes(),
    )?;
    write(&corpus.join("xmlrpc/response"), xmlrpc::encode_response(&Ok(record.clone())).as_bytes())?;
    use xenvault_xapi_wire::cbt::ChangedBlocks;
    use xenvault_xapi_wire::jsonrpc::{self, JsonRpcVersion};
    let params = [Value::Str("OpaqueRef:0f0e".into()), Value::Array(vec![Value::Bool(true), Value::Double(1.5)])];
    write(&corpus.join("jsonrpc/call"), &jsonrpc::encode_call("VM.get_record", &params, 7, JsonRpcVersion::V2))?;
    write(&corpus.join("jsonrpc/response"), &jsonrpc::encode_response(JsonRpcVersion::V1, &7.into(), &Ok(record)))?;
    let mut changed = ChangedBlocks::for_disk_size(64 * MIB);
    changed.mark_bytes(MIB..3 * MIB);
    changed.mark_bytes(40 * MIB..40 * MIB + 1);
    write(&corpus.join("jsonrpc/cbt-bitmap"), changed.encode().as_bytes())?;

    let raw = work.join("disk.raw");
    let mut disk = vec![0u8; 2 * MIB as usize];
    disk[..4096].fill(0x11);
    disk[MIB as usize..][..512].fill(0x22);
    std::fs::write(&raw, &disk)?;
    let vhd = work.join("disk.vhd");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"])
        .args([&raw, &vhd])
        .status()?;
    if !status.success() {
        return Err("qemu-img convert failed".into());
    }
    write(&corpus.join("vhd/dynamic"), &std::fs::read(&vhd)?)?;

    use xenvault_xva::{Compression, Compressor, OvaObject, OvaVersion, XvaWriter, ova_xml};
    let version = OvaVersion {
        hostname: "fuzz".into(),
        date: "2026-01-01".into(),
        product_version: "8.3.0".into(),
        product_brand: "XCP-ng".into(),
        build_number: "fuzz".into(),
        xapi_major: 24,
        xapi_minor: 19,
        export_vsn: 2,
    };
    let vdi = Value::Struct([("virtual_size".into(), Value::Str((MIB + 4096).to_string()))].into());
    let objects = [OvaObject { class: "VDI".into(), id: "Ref:1".into(), snapshot: vdi }];
    for (name, compression) in [("one-disk", Compression::None), ("one-disk-gzip", Compression::Gzip)] {
        let out = Compressor::new(Vec::new(), compression)?;
        let mut xva = XvaWriter::new(out, &ova_xml(&version, &objects), 0, Default::default())?;
        // A zero chunk (skipped) and a short last one keep the seed small.
        xva.begin_disk("Ref:1", MIB + 4096)?;
        xva.write_zeros(MIB)?;
        xva.write(&disk[..4096])?;
        write(&corpus.join("xva").join(name), &xva.finish()?.finish()?)?;
    }

    use xenvault_nbd::proto::*;
    // What a server says to our client: handshake refusing structured replies, a read reply.
    let mut server = NBD_MAGIC.to_be_bytes().to_vec();
    server.extend_from_slice(&IHAVEOPT.to_be_bytes());
    server.extend_from_slice(&FLAG_FIXED_NEWSTYLE.to_be_bytes());
    for option in [OPT_STRUCTURED_REPLY, OPT_GO] {
        server.extend_from_slice(&OptionReplyHeader::encode(option, REP_ERR_UNSUP, 0));
    }
    server.extend_from_slice(&4096u64.to_be_bytes());
    server.extend_from_slice(&3u16.to_be_bytes());
    server.extend_from_slice(&[0; EXPORT_NAME_PADDING]);
    server.extend_from_slice(&encode_simple_reply(0, 1));
    server.extend_from_slice(&[9; 4096]);
    write(&corpus.join("nbd/server-says"), &server)?;
    // What a client says to our server (first byte: modern, writable), then commands.
    let mut client = vec![3, 0, 0, 0, 1];
    let mut go = string32("disk");
    go.extend_from_slice(&0u16.to_be_bytes());
    for (option, payload) in [(OPT_STRUCTURED_REPLY, vec![]), (OPT_GO, go)] {
        client.extend_from_slice(&OptionHeader::encode(option, payload.len() as u32));
        client.extend_from_slice(&payload);
    }
    client.extend_from_slice(&Request::new(CMD_READ, 0, 1, 0, 4096).encode());
    client.extend_from_slice(&Request::new(CMD_WRITE, 0, 2, 512, 16).encode());
    client.extend_from_slice(&[3; 16]);
    client.extend_from_slice(&Request::new(CMD_BLOCK_STATUS, 0, 3, 0, 4096).encode());
    client.extend_from_slice(&Request::new(CMD_DISC, 0, 4, 0, 0).encode());
    write(&corpus.join("nbd/client-says"), &client)?;
    Ok(())
}
