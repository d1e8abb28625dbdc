//! The repository on a faulty object store (OpenDAL's memory service under an injected
//! fault layer, see `xenvault_repo::faults`), and on real S3 (SeaweedFS) behind a loopback
//! proxy that cuts and delays connections: failed, stalled, cut and slow requests are
//! retried, or the operation fails cleanly; nothing committed is ever lost.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenvault_repo::backend::BackendOptions;
use xenvault_repo::faults::{FaultKind, FaultOp, Faults};
use xenvault_repo::keys::Secret;
use xenvault_repo::{DiskReader, Error, Repository, SourceInfo};

use common::CHUNK;
const ALL_OPS: [FaultOp; 5] = [FaultOp::Read, FaultOp::Write, FaultOp::List, FaultOp::Stat, FaultOp::Delete];

fn secret() -> Secret {
    Secret::passphrase("faults")
}

fn location() -> String {
    format!("memory://faults-{}", uuid::Uuid::new_v4().simple())
}

fn faulty(faults: &Arc<Faults>, retries: usize) -> BackendOptions {
    BackendOptions { faults: Some(faults.clone()), retries, ..Default::default() }
}

async fn init(location: &str, backend: &BackendOptions) -> xenvault_repo::Result<Repository> {
    let opts = common::small_repo_options(secret());
    Repository::init(location, backend, opts).await
}

/// A 12-chunk image: the first chunks shared by every seed (deduplicated), the rest its own.
fn image(seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 * CHUNK);
    let mut n = 0u64;
    while out.len() < 12 * CHUNK {
        let key = if out.len() < 4 * CHUNK { 0 } else { seed };
        out.extend_from_slice(blake3::hash(&[key.to_le_bytes(), n.to_le_bytes()].concat()).as_bytes());
        n += 1;
    }
    out
}

async fn backup(repo: &Repository, source: &str, image: &[u8]) -> xenvault_repo::Result<String> {
    let info = SourceInfo { id: source.into(), kind: "image".into(), name: source.into() };
    let session = repo.start_backup(info).await?;
    let mut w = session.disk_writer(0, "disk0", "", image.len() as u64, None).await?;
    w.write(0, image).await?;
    w.finish().await?;
    Ok(session.commit(serde_json::Value::Null, vec![]).await?.id)
}

/// Every `(id, image)` restores byte-exactly from a fresh, healthy handle, and verify is clean.
async fn assert_intact(location: &str, backend: &BackendOptions, committed: &[(String, Vec<u8>)]) {
    let repo = Repository::open(location, backend, Some(&secret())).await.expect("reopen");
    let report = xenvault_repo::verify::verify(
        &repo,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .expect("verify");
    assert!(!report.found_damage(), "{report:?}");
    assert_eq!(report.restore_points_checked, committed.len(), "{report:?}");
    for (id, data) in committed {
        let m = repo.restore_point(id).await.expect("committed point");
        let reader = DiskReader::new(&repo, &m.disks[0]).await.expect("reader");
        let mut buf = vec![0u8; reader.size() as usize];
        reader.read_at(0, &mut buf).await.expect("restore");
        assert!(&buf == data, "{id} restores different bytes");
    }
}

/// Errors, stalls and cut uploads on a fifth of all requests, and slow writes: with
/// retries, init, backups, verify, forget and prune all succeed and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_carry_backup_verify_and_prune_through_faults() {
    let faults = Faults::new(0x5eed);
    faults.inject(&ALL_OPS, FaultKind::Error, 10);
    faults.inject(&[FaultOp::Read, FaultOp::Write], FaultKind::Stall(Duration::from_millis(30)), 5);
    faults.inject(&[FaultOp::Write], FaultKind::Cut, 10);
    faults.slow_writes(Duration::from_millis(2));
    let location = location();
    let options = faulty(&faults, 10);
    let repo = init(&location, &options).await.expect("init through faults");
    let mut committed = Vec::new();
    for seed in 1..=6 {
        let data = image(seed);
        let id = backup(&repo, "vm", &data).await.unwrap_or_else(|e| panic!("backup {seed}: {e}"));
        committed.push((id, data));
    }
    let report = xenvault_repo::verify::verify(
        &repo,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .expect("verify through faults");
    assert!(!report.found_damage(), "{report:?}");

    let (forgotten, kept) = committed.split_at(3);
    for (id, _) in forgotten {
        repo.delete_restore_point(id).await.expect("forget");
    }
    let gc = xenvault_repo::gc::gc(&repo).await.expect("prune through faults");
    eprintln!("faults injected: {}, packs deleted by prune: {}", faults.injected(), gc.packs_deleted);
    assert!(faults.injected() > 20, "the faults were met: {}", faults.injected());
    faults.clear();
    assert_intact(&location, &Default::default(), kept).await;
}

/// Without retries the same faults make operations fail: each fails with an error (no
/// panic, no hang), and every backup that reported success restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_faults_fail_cleanly_and_lose_nothing() {
    let faults = Faults::new(0xfa11);
    let location = location();
    init(&location, &Default::default()).await.expect("init");
    let repo = Repository::open(&location, &faulty(&faults, 0), Some(&secret())).await.expect("open");
    faults.inject(&ALL_OPS, FaultKind::Error, 4);
    faults.inject(&[FaultOp::Write], FaultKind::Cut, 4);
    let (mut committed, mut failed) = (Vec::new(), 0);
    for seed in 1..=12 {
        let data = image(seed);
        match backup(&repo, "vm", &data).await {
            Ok(id) => committed.push((id, data)),
            Err(Error::Backend(e)) => {
                assert!(e.to_string().contains("injected"), "{e}");
                failed += 1;
            }
            Err(e) => panic!("backup {seed} failed with an unexpected error: {e}"),
        }
    }
    eprintln!("{} backups committed, {failed} failed cleanly; faults injected: {}", committed.len(), faults.injected());
    assert!(failed > 0 && !committed.is_empty(), "both outcomes met ({failed} failed)");
    faults.clear();
    assert_intact(&location, &Default::default(), &committed).await;
}

/// A TCP proxy on loopback in front of `target`. Each connection is, by a seeded draw,
/// cut after a few KiB in one direction (both ends closed), or passed on with every piece
/// delayed a little.
struct FaultProxy {
    port: u16,
    cuts: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl FaultProxy {
    async fn start(target: u16, cut_percent: u64, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let (cuts, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, n) = (cuts.clone(), connections.clone());
        let rng = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                // splitmix64 steps: reproducible draws per connection.
                let draw = rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let cut_after = (draw % 100 < cut_percent).then_some(((draw >> 8) % (64 << 10)) as usize + 1);
                if cut_after.is_some() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                let upstream = draw & (1 << 40) != 0;
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let (up_cut, down_cut) = if upstream { (cut_after, None) } else { (None, cut_after) };
                let up = tokio::spawn(pipe(client_read, server_write, up_cut, delay));
                let down = tokio::spawn(pipe(server_read, client_write, down_cut, delay));
                // Either direction cut or closed ends the connection both ways.
                tokio::spawn(async move {
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        FaultProxy { port, cuts, connections }
    }
}

/// Copies `from` to `to`, each piece after `delay`, stopping after `cut_after` bytes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut_after: Option<usize>,
    delay: Duration,
) {
    let mut buf = vec![0u8; 16 << 10];
    let mut left = cut_after.unwrap_or(usize::MAX);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(left),
        };
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        left -= n;
        if left == 0 {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Real S3 (SeaweedFS) behind a proxy that cuts a share of the connections mid-request or
/// mid-answer and delays the rest: backups, verify and prune go through on retries, and
/// every committed point restores exactly through a healthy connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_behind_a_cutting_proxy_loses_nothing() {
    let server = common::s3();
    let healthy = server.options();
    let endpoint = healthy.s3_endpoint.clone().expect("SeaweedFS endpoint");
    let s3_port: u16 = endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).expect("endpoint port");
    let proxy = FaultProxy::start(s3_port, 15, Duration::from_millis(1)).await;
    let flaky = BackendOptions {
        s3_endpoint: Some(format!("http://127.0.0.1:{}", proxy.port)),
        retries: 10,
        ..healthy.clone()
    };
    let location = server.url("faults-proxy");
    let repo = init(&location, &flaky).await.expect("init through the proxy");
    let mut committed = Vec::new();
    for seed in 1..=5 {
        let data = image(100 + seed);
        let id = backup(&repo, "vm", &data).await.unwrap_or_else(|e| panic!("backup {seed}: {e}"));
        committed.push((id, data));
    }
    let report = xenvault_repo::verify::verify(
        &repo,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .expect("verify through the proxy");
    assert!(!report.found_damage(), "{report:?}");
    let (forgotten, kept) = committed.split_at(2);
    for (id, _) in forgotten {
        repo.delete_restore_point(id).await.expect("forget");
    }
    xenvault_repo::gc::gc(&repo).await.expect("prune through the proxy");
    let (cuts, connections) = (proxy.cuts.load(Ordering::SeqCst), proxy.connections.load(Ordering::SeqCst));
    eprintln!("proxy: {connections} connections, {cuts} cut");
    assert!(cuts > 0, "connections were cut ({connections} made)");
    assert_intact(&location, &healthy, kept).await;
}
