//! Measures backup / restore throughput and peak memory of the repository on a local
//! directory: `cargo run --release -p xenvault-repo --example throughput -- DIR SIZE_MIB CHUNK_KIB...`
//! The image mixes zeros, random data and compressible "OS-like" text, a quarter each,
//! plus a quarter of duplicated blocks.

use std::sync::Arc;
use std::time::Instant;
use xenvault_repo::keys::{KdfParams, Secret};
use xenvault_repo::{BlockSource, DiskReader, InitOptions, RawFileSource, Repository, SourceInfo};

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    kib / 1024
}

fn make_image(path: &std::path::Path, size: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let block = 1 << 20;
    let mut x = 0x2545F4914F6CDD1Du64;
    let words = ["kernel", "module", "libc.so.6", "usr/share/doc", "config", "0x7fff", "systemd", "journal"];
    let mut buf = vec![0u8; block];
    let mut text = Vec::with_capacity(block);
    for i in 0..size / block {
        match i % 4 {
            0 => buf.fill(0),
            1 => buf.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
            2 => {
                text.clear();
                while text.len() < block {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    text.extend_from_slice(words[(x % 8) as usize].as_bytes());
                    text.extend_from_slice(format!(" {} ", x % 10_000).as_bytes());
                }
                buf.copy_from_slice(&text[..block]);
            }
            _ => {} // repeat the previous block: duplicates
        }
        f.write_all(&buf)?;
    }
    f.flush()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).ok_or("usage: DIR SIZE_MIB CHUNK_KIB...")?);
    let size_mib: usize = args.get(2).map_or(Ok(1024), |s| s.parse())?;
    let image = dir.join("image.raw");
    if std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0) != (size_mib << 20) as u64 {
        make_image(&image, size_mib << 20)?;
    }
    for chunk_kib in args.iter().skip(3).map(|s| s.parse::<u32>()) {
        let chunk_kib = chunk_kib?;
        let repo_dir = dir.join(format!("repo-{chunk_kib}k"));
        let _ = std::fs::remove_dir_all(&repo_dir);
        let secret = Secret::passphrase("bench");
        let opts = InitOptions {
            secret: Some(secret.clone()),
            kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
            chunk_size: chunk_kib << 10,
            ..Default::default()
        };
        let repo = Repository::init(repo_dir.to_str().ok_or("path")?, &Default::default(), opts).await?;
        let mut line = format!("chunk {chunk_kib:>5} KiB:");
        for run in ["full", "again"] {
            let src: Arc<dyn BlockSource> = Arc::new(RawFileSource::open(&image)?);
            let t = Instant::now();
            let session =
                repo.start_backup(SourceInfo { id: "bench".into(), kind: "image".into(), name: "b".into() }).await?;
            let mut w = session.disk_writer(0, "d", "", src.size(), None).await?;
            w.write_source(src.clone()).await?;
            w.finish().await?;
            let m = session.commit(serde_json::Value::Null, vec![]).await?;
            let secs = t.elapsed().as_secs_f64();
            line += &format!(" backup-{run} {:.0} MB/s", src.size() as f64 / secs / 1e6);
            if run == "full" {
                let stored: u64 = m.disks[0].stats.bytes_stored;
                line += &format!(" (stored {} MiB)", stored >> 20);
                let out = dir.join("restored.raw");
                let t = Instant::now();
                let reader = DiskReader::new(&repo, &m.disks[0]).await?;
                reader
                    .restore_to_file(
                        &out,
                        xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
                        &Default::default(),
                    )
                    .await?;
                line += &format!(" restore {:.0} MB/s", src.size() as f64 / t.elapsed().as_secs_f64() / 1e6);
                line += &format!(" peak-rss {} MiB", peak_rss_mib());
                let same = std::fs::read(&out)? == std::fs::read(&image)?;
                line += if same { " identical" } else { " MISMATCH" };
                std::fs::remove_file(&out)?;
            }
        }
        let objects = walk(&repo_dir);
        line += &format!(" objects {objects} index-mem {} KiB", repo.index_memory() >> 10);
        println!("{line}");
    }
    Ok(())
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}
