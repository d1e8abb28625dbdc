//! `xenvault benchmark`: how fast this machine hashes, compresses, encrypts and stores
//! chunks (like `proxmox-backup-client benchmark`), measured with the repository's own
//! primitives so the figures are the ones a backup gets.

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
    /// Chunk size in bytes for the CPU measurements.
    #[arg(long, default_value_t = 1 << 20)]
    chunk_size: usize,
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

pub async fn run(cmd: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Benchmark(args) = cmd;
    anyhow::ensure!(args.seconds > 0.0 && args.chunk_size > 0, "--seconds and --chunk-size must be positive");
    let duration = Duration::from_secs_f64(args.seconds);
    let (chunk_size, level) = (args.chunk_size, args.zstd_level);
    let mut results = tokio::task::spawn_blocking(move || cpu_measurements(chunk_size, level, duration))
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for m in &results {
            println!(
                "{:<78} {:>9.1} MB/s",
                format!("{} ({} thread{})", m.name, m.threads, plural(m.threads)),
                m.bytes_per_second / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Test data like a disk's: half random (incompressible), half text-like (compressible).
struct Samples {
    random: Vec<u8>,
    text: Vec<u8>,
}

impl Samples {
    fn new(chunk_size: usize) -> anyhow::Result<Self> {
        let mut random = vec![0u8; chunk_size];
        fill_random(&mut random)?;
        let words = ["kernel", "config", "libc.so.6", "/usr/share/doc", "0x7fff", "systemd", "error", "= 42;\n"];
        let mut text = Vec::with_capacity(chunk_size + 64);
        let mut state = 0x9e37_79b9_u32;
        while text.len() < chunk_size {
            // xorshift: varied but repetitive text, compressible like logs and binaries.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            text.extend_from_slice(words[(state % words.len() as u32) as usize].as_bytes());
            text.push(b' ');
        }
        text.truncate(chunk_size);
        Ok(Samples { random, text })
    }

    fn mixed(&self) -> [&[u8]; 2] {
        [&self.random, &self.text]
    }
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

fn cpu_measurements(chunk_size: usize, level: i32, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let samples = Samples::new(chunk_size)?;
    let master = MasterKey::generate()?;
    let plain = Crypto::new(&master, false, level);
    let encrypting = Crypto::new(&master, true, level);
    let mut aead_key = [0u8; KEY_LEN];
    fill_random(&mut aead_key)?;
    let aead = Aead::new(&aead_key);
    let name = b"benchmark";
    let one = |name: &str, bps: f64| Measurement { name: name.to_string(), threads: 1, bytes_per_second: bps };

    let compressed = plain.seal(name, &samples.text, true)?;
    let encrypted = aead.seal(name, &samples.random)?;
    let mut results = vec![
        one(
            "chunk ids: BLAKE3 keyed",
            throughput(duration, || {
                std::hint::black_box(plain.chunk_id(&samples.random));
                Ok(chunk_size)
            })?,
        ),
        // An unencrypted seal is zstd plus a short checksum: compression dominates.
        one(
            &format!("compress: zstd-{level}, text-like data"),
            throughput(duration, || {
                std::hint::black_box(plain.seal(name, &samples.text, true)?);
                Ok(chunk_size)
            })?,
        ),
        one(
            "decompress: zstd, text-like data",
            throughput(duration, || Ok(plain.open(name, &compressed, chunk_size)?.len()))?,
        ),
        one(
            "encrypt: AES-256-GCM",
            throughput(duration, || {
                std::hint::black_box(aead.seal(name, &samples.random)?);
                Ok(chunk_size)
            })?,
        ),
        one(
            "decrypt: AES-256-GCM",
            throughput(duration, || aead.open(name, &encrypted).map(|p| p.len()).context("decryption failed"))?,
        ),
    ];

    // The whole per-chunk work of a backup (zero test, id, compress, encrypt) on every
    // core, over alternating random and text-like chunks.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pipeline = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut turn = 0usize;
                    throughput(duration, || {
                        turn += 1;
                        let chunk = samples.mixed()[turn % 2];
                        if !is_zero(chunk) {
                            let id = encrypting.chunk_id(chunk);
                            std::hint::black_box(encrypting.seal(&id.0, chunk, true)?);
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
        name: "chunk pipeline: id + zstd + AES-256-GCM, mixed data".into(),
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
