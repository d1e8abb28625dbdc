//! `xenvault benchmark`: how fast this machine hashes, compresses, encrypts and stores
//! chunks (like `proxmox-backup-client benchmark`), measured with the repository's own
//! primitives on real data (a disk image given with `--sample`, else files of this
//! machine's /usr), so the figures are the ones a backup of such data gets.

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xenvault_repo::backend::{self, Backend, BackendError, BackendOptions, ObjectStore};
use xenvault_repo::crypto::{Aead, Crypto, KEY_LEN, MasterKey, fill_random, is_zero};

#[derive(Subcommand)]
pub enum Commands {
    /// Measure hashing, compression, encryption, chunk pipeline and store throughput.
    Benchmark(BenchmarkArgs),
}

#[derive(Args)]
pub struct BenchmarkArgs {
    /// Also measure upload/download to this location (path, s3://bucket/prefix,
    /// azblob://container/prefix); objects go under a `benchmark-*/` prefix and are removed.
    #[arg(long)]
    repo: Option<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Chunk size in bytes for the CPU measurements (the default is the repository default).
    #[arg(long, default_value_t = 256 << 10)]
    chunk_size: usize,
    /// Measure on this disk image (or any file): pieces spread over all of it, zeros
    /// included, so the pipeline figure predicts a full backup of it. Default: files under
    /// /usr (an operating system's own data, without the zeros of a disk's free space).
    #[arg(long)]
    sample: Option<std::path::PathBuf>,
    /// Bytes of sample data.
    #[arg(long, default_value_t = 128 << 20)]
    sample_size: usize,
    /// Size of each object in the store measurement (the default is the default pack size).
    #[arg(long, default_value_t = 16 << 20)]
    object_size: usize,
    /// Objects uploaded, then downloaded, in the store measurement.
    #[arg(long, default_value_t = 16)]
    objects: usize,
    /// zstd level (the repository default is 1).
    #[arg(long, default_value_t = 1)]
    zstd_level: i32,
    #[command(flatten)]
    backend: BackendArgs,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Endpoint and credentials of `--repo`; the environment variables of
/// `xenvault_repo::backend::open` apply when these are absent.
#[derive(Args)]
pub struct BackendArgs {
    #[arg(long)]
    s3_endpoint: Option<String>,
    #[arg(long)]
    s3_region: Option<String>,
    #[arg(long)]
    s3_virtual_host_style: bool,
    #[arg(long)]
    azure_endpoint: Option<String>,
    #[arg(long, default_value_t = 8)]
    max_concurrency: usize,
}

impl BackendArgs {
    fn options(&self) -> BackendOptions {
        let from_environment = crate::environment::backend_options();
        BackendOptions {
            s3_endpoint: self.s3_endpoint.clone().or(from_environment.s3_endpoint),
            s3_region: self.s3_region.clone().or(from_environment.s3_region),
            s3_virtual_host_style: self.s3_virtual_host_style,
            azure_endpoint: self.azure_endpoint.clone().or(from_environment.azure_endpoint),
            max_concurrency: self.max_concurrency,
            ..from_environment
        }
    }
}

#[derive(Serialize)]
struct Measurement {
    name: String,
    threads: usize,
    bytes_per_second: f64,
}

/// What the CPU figures were measured on.
#[derive(Serialize)]
struct SampleReport {
    source: String,
    bytes: usize,
    /// Share of the sample in all-zero chunks (skipped by a backup before hashing).
    zero_share: f64,
    /// Sealed bytes over the sample's non-zero bytes at the measured zstd level.
    stored_share: f64,
}

#[derive(Serialize)]
struct Report {
    sample: SampleReport,
    measurements: Vec<Measurement>,
}

pub async fn run(cmd: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Benchmark(args) = cmd;
    anyhow::ensure!(args.seconds > 0.0 && args.chunk_size > 0, "--seconds and --chunk-size must be positive");
    anyhow::ensure!(args.sample_size >= args.chunk_size, "--sample-size must hold at least one chunk");
    let duration = Duration::from_secs_f64(args.seconds);
    let (chunk_size, level, sample_size, sample) =
        (args.chunk_size, args.zstd_level, args.sample_size, args.sample.clone());
    let (sample, mut results) = tokio::task::spawn_blocking(move || {
        let sample = Sample::load(sample.as_deref(), sample_size, chunk_size)?;
        let results = cpu_measurements(&sample, level, duration)?;
        anyhow::Ok((sample, results))
    })
    .await
    .context("benchmark thread")??;
    match &args.repo {
        Some(repo) => results.extend(store_measurements(repo, &args).await?),
        None => {
            let dir = std::env::temp_dir().join(format!("xenvault-benchmark-{}", std::process::id()));
            let measured = store_measurements(&dir.display().to_string(), &args).await;
            let _ = std::fs::remove_dir_all(&dir);
            results.extend(measured?);
        }
    }
    let report = Report { sample: sample.report(level)?, measurements: results };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &report.sample;
    println!(
        "sample: {} MiB of {}; {:.0}% in zero chunks, the rest stored at {:.0}% of its size (zstd {level})",
        s.bytes >> 20,
        s.source,
        s.zero_share * 100.0,
        s.stored_share * 100.0
    );
    for m in &report.measurements {
        println!(
            "{:<78} {:>9.1} MB/s",
            format!("{} ({} thread{})", m.name, m.threads, plural(m.threads)),
            m.bytes_per_second / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Real data cut into chunks, as a backup would see it.
struct Sample {
    source: String,
    chunks: Vec<Vec<u8>>,
}

/// Pieces a disk image sample is read in, spread over the whole image.
const IMAGE_PIECE: usize = 4 << 20;

impl Sample {
    fn load(path: Option<&std::path::Path>, size: usize, chunk_size: usize) -> anyhow::Result<Self> {
        let (source, data) = match path {
            Some(path) => (path.display().to_string(), read_spread(path, size)?),
            None => ("files under /usr".to_string(), read_usr_files(size)?),
        };
        let chunks: Vec<Vec<u8>> = data.chunks_exact(chunk_size).map(<[u8]>::to_vec).collect();
        anyhow::ensure!(!chunks.is_empty(), "{source}: less than one chunk of data ({} bytes)", data.len());
        Ok(Sample { source, chunks })
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    fn data_chunks(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.chunks.iter().filter(|c| !is_zero(c))
    }

    fn report(&self, level: i32) -> anyhow::Result<SampleReport> {
        let crypto = Crypto::new(&MasterKey::generate()?, true, level);
        let (mut data, mut stored) = (0usize, 0usize);
        for chunk in self.data_chunks() {
            data += chunk.len();
            stored += crypto.seal(b"sample", chunk, true)?.len();
        }
        Ok(SampleReport {
            source: self.source.clone(),
            bytes: self.bytes(),
            zero_share: 1.0 - data as f64 / self.bytes() as f64,
            stored_share: if data == 0 { 0.0 } else { stored as f64 / data as f64 },
        })
    }
}

/// `size` bytes of `path` in pieces spread evenly over it (all of it when smaller).
fn read_spread(path: &std::path::Path, size: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.seek(SeekFrom::End(0)).with_context(|| format!("reading {}", path.display()))?;
    let pieces = size.div_ceil(IMAGE_PIECE).max(1) as u64;
    let stride = (len / pieces).max(IMAGE_PIECE as u64);
    let mut out = Vec::with_capacity(size);
    let mut at = 0;
    while out.len() < size && at < len {
        let want = IMAGE_PIECE.min(size - out.len());
        file.seek(SeekFrom::Start(at))?;
        let got = (&mut file).take(want as u64).read_to_end(&mut out)?;
        if got == 0 {
            break;
        }
        at += stride;
    }
    Ok(out)
}

/// `size` bytes of the regular files under /usr, in directory order.
fn read_usr_files(size: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(size);
    let mut dirs = vec![std::path::PathBuf::from("/usr")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for entry in entries {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file()
                && let Ok(file) = std::fs::File::open(entry.path())
            {
                let left = (size - out.len()) as u64;
                let _ = file.take(left).read_to_end(&mut out);
                if out.len() >= size {
                    return Ok(out);
                }
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "no readable files under /usr to measure on: give --sample");
    Ok(out)
}

/// Runs `step` (which processes some bytes and returns how many) for about `duration`.
fn throughput(duration: Duration, mut step: impl FnMut() -> anyhow::Result<usize>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut bytes = 0usize;
    while start.elapsed() < duration {
        bytes += step()?;
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

fn cpu_measurements(sample: &Sample, level: i32, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let master = MasterKey::generate()?;
    let plain = Crypto::new(&master, false, level);
    let encrypting = Crypto::new(&master, true, level);
    let mut aead_key = [0u8; KEY_LEN];
    fill_random(&mut aead_key)?;
    let aead = Aead::new(&aead_key);
    let name = b"benchmark";
    let one = |name: &str, bps: f64| Measurement { name: name.to_string(), threads: 1, bytes_per_second: bps };
    // The single-thread figures cycle through the sample's non-zero chunks.
    let data: Vec<&Vec<u8>> = sample.data_chunks().collect();
    anyhow::ensure!(!data.is_empty(), "{}: the sample is all zeros", sample.source);
    let compressed = data.iter().map(|c| plain.seal(name, c, true)).collect::<Result<Vec<_>, _>>()?;
    let encrypted = data.iter().map(|c| aead.seal(name, c)).collect::<Result<Vec<_>, _>>()?;
    let cycle = |f: &mut dyn FnMut(usize) -> anyhow::Result<usize>| {
        let mut turn = 0;
        throughput(duration, || {
            turn = (turn + 1) % data.len();
            f(turn)
        })
    };
    let mut results = vec![
        one(
            "chunk ids: BLAKE3 keyed",
            cycle(&mut |i| {
                std::hint::black_box(plain.chunk_id(data[i]));
                Ok(data[i].len())
            })?,
        ),
        // An unencrypted seal is zstd plus a short checksum: compression dominates.
        one(
            &format!("compress: zstd {level} (incompressible chunks skipped by the probe)"),
            cycle(&mut |i| {
                std::hint::black_box(plain.seal(name, data[i], true)?);
                Ok(data[i].len())
            })?,
        ),
        one("decompress: zstd", cycle(&mut |i| Ok(plain.open(name, &compressed[i], data[i].len())?.len()))?),
        one(
            "encrypt: AES-256-GCM",
            cycle(&mut |i| {
                std::hint::black_box(aead.seal(name, data[i])?);
                Ok(data[i].len())
            })?,
        ),
        one(
            "decrypt: AES-256-GCM",
            cycle(&mut |i| aead.open(name, &encrypted[i]).map(|p| p.len()).context("decryption failed"))?,
        ),
    ];

    // The whole per-chunk work of a backup (zero test, id, compress, encrypt into a reused
    // buffer) on every core, over every chunk of the sample, zeros included: bytes of
    // sample per second, which is what a full backup of data like it gets from the CPU.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let pipeline = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut sealed = Vec::new();
                    throughput(duration, || {
                        let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let chunk = &sample.chunks[turn % sample.chunks.len()];
                        if !is_zero(chunk) {
                            let id = encrypting.chunk_id(chunk);
                            sealed.clear();
                            encrypting.seal_into(&id.0, chunk, Some(level), &mut sealed)?;
                            std::hint::black_box(&sealed);
                        }
                        Ok(chunk.len())
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked"))))
            .sum::<anyhow::Result<f64>>()
    })?;
    results.push(Measurement {
        name: "chunk pipeline: zero test + id + zstd + AES-256-GCM, the sample".into(),
        threads,
        bytes_per_second: pipeline,
    });
    Ok(results)
}

/// Uploads `objects` random objects with bounded concurrency, downloads them, removes them.
async fn store_measurements(location: &str, args: &BenchmarkArgs) -> anyhow::Result<Vec<Measurement>> {
    let store = backend::open(location, &args.backend.options())?;
    let prefix = format!("benchmark-{}", xenvault_repo::crypto::random_hex(8)?);
    let mut data = vec![0u8; args.object_size];
    fill_random(&mut data)?;
    let data = Bytes::from(data);
    let paths: Vec<String> = (0..args.objects).map(|i| format!("{prefix}/{i}")).collect();
    let parallel = args.backend.max_concurrency.clamp(1, args.objects.max(1));

    let timed = async {
        let start = Instant::now();
        for_each_parallel(
            &paths,
            parallel,
            |store, path| {
                let data = data.clone();
                async move { store.put(&path, data).await }
            },
            &store,
        )
        .await
        .with_context(|| format!("upload to {location}"))?;
        let upload = start.elapsed();
        let start = Instant::now();
        for_each_parallel(&paths, parallel, |store, path| async move { store.get(&path).await.map(drop) }, &store)
            .await
            .with_context(|| format!("download from {location}"))?;
        anyhow::Ok((upload, start.elapsed()))
    }
    .await;
    // Clean up even after a failure, then report the failure.
    store.delete_many(paths).await.with_context(|| format!("removing {prefix}/ from {location}"))?;
    let (upload, download) = timed?;
    let total = (args.object_size * args.objects) as f64;
    let measure = |what: &str, time: Duration| Measurement {
        name: format!("store {what}: {location}, {} MiB objects", args.object_size >> 20),
        threads: parallel,
        bytes_per_second: total / time.as_secs_f64(),
    };
    Ok(vec![measure("upload", upload), measure("download", download)])
}

/// Runs `op` on every path with `parallel` requests in flight.
async fn for_each_parallel<F, Fut>(paths: &[String], parallel: usize, op: F, store: &Backend) -> anyhow::Result<()>
where
    F: Fn(Backend, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), BackendError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        if tasks.len() >= parallel {
            join_one(&mut tasks).await?;
        }
        tasks.spawn(op(store.clone(), path.clone()));
    }
    while !tasks.is_empty() {
        join_one(&mut tasks).await?;
    }
    Ok(())
}

async fn join_one(tasks: &mut tokio::task::JoinSet<Result<(), BackendError>>) -> anyhow::Result<()> {
    if let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
