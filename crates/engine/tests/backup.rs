//! End to end on the in-process simulator: every restore point, rebuilt from the
//! repository, must equal `sim.sha256` of the disk at snapshot time, whatever the level,
//! the strategy, or the faults; and no snapshot of ours may be left behind but the one
//! base per VM.

mod common;

use base64::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;
use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::{JobReport, Status, VmReport};
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::{Level, Requested, Strategy};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_pool::host::Host;
use xenvault_pool::hygiene;
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, SimHandle, Simulator};
use xenvault_types::metadata::VmMetadata;
use xenvault_types::progress::{HiddenProgress, Key, Phase, Progress, Tally};
use xenvault_xapi_wire::Value;

const VM: &str = "debian-web";

struct Env {
    _dir: tempfile::TempDir,
    _sim: SimHandle,
    sim: SimClient,
    host: Host,
    store: Store,
}

async fn env() -> Env {
    let defaults = xenvault_repo::InitOptions::default();
    env_with(defaults.chunk_size, defaults.page_slots).await
}

/// A fresh simulator and a repository with the given chunk size and index page size.
async fn env_with(chunk_size: u32, page_slots: u32) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path().join("sim"))).await.unwrap();
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim.cert_pem).unwrap();
    let login = PoolLogin {
        name: "test".into(),
        entry: PoolEntry {
            url: sim.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(&fingerprint).unwrap(),
        },
        password: sim.password.clone(),
    };
    let host = Host::connect(&login).await.unwrap();
    let repo_dir = dir.path().join("repo");
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase("test")),
        kdf: xenvault_repo::keys::KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 },
        chunk_size,
        page_slots,
        ..Default::default()
    };
    let repo = xenvault_repo::Repository::init(repo_dir.to_str().unwrap(), &Default::default(), options).await.unwrap();
    let client = SimClient::login(&sim.url, &sim.password).await.unwrap();
    Env { _dir: dir, _sim: sim, sim: client, host, store: Store::from_repository(repo) }
}

fn options(level: Level, strategy: Requested) -> BackupOptions {
    BackupOptions { selectors: vec![Selector::NameOrUuid(VM.into())], level, strategy, ..Default::default() }
}

impl Env {
    async fn backup(&self, level: Level, strategy: Requested) -> VmReport {
        self.backup_with(&options(level, strategy)).await
    }

    async fn backup_with(&self, options: &BackupOptions) -> VmReport {
        self.backup_showing(options, HiddenProgress::shared()).await
    }

    async fn backup_showing(&self, options: &BackupOptions, progress: Arc<dyn Progress>) -> VmReport {
        let report: JobReport = job::backup(&self.host, &self.store, options, progress).await.unwrap();
        report.vms.into_iter().next().unwrap()
    }

    /// uuid → sim.sha256 of each disk of the VM, now.
    async fn digests(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for vdi in self.vdis().await {
            let digest = self.sim.call("sim.sha256", vec![Value::from(vdi.as_str())]).await.unwrap();
            out.insert(vdi, digest.as_str().unwrap().to_owned());
        }
        out
    }

    async fn vdis(&self) -> Vec<String> {
        let vm = self.vm().await;
        let mut uuids = Vec::new();
        for (_, vdi) in self.host.disks(&vm).await.unwrap() {
            uuids.push(vdi.uuid);
        }
        uuids
    }

    async fn vm(&self) -> xenvault_pool::records::Vm {
        self.host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap()
    }

    async fn write(&self, vdi: &str, offset: u64, data: &[u8]) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        let args = vec![Value::from(vdi), Value::from(offset.to_string()), Value::from(b64)];
        self.sim.call("sim.write", args).await.unwrap();
    }

    async fn scribble(&self, percent: &str, seed: u64) {
        for vdi in self.vdis().await {
            let args = vec![
                Value::from(vdi.as_str()),
                Value::from(percent),
                Value::from("4096"),
                Value::from(seed.to_string()),
            ];
            self.sim.call("sim.scribble", args).await.unwrap();
        }
    }

    /// Rebuilds every disk of the restore point and compares it with `expected`.
    async fn assert_restores_to(&self, report: &VmReport, expected: &BTreeMap<String, String>) {
        assert!(matches!(report.status, Status::Ok), "backup failed: {:?}", report.error);
        let id = report.restore_point.as_deref().unwrap();
        let manifest = self.store.repository().restore_point(id).await.unwrap();
        assert_eq!(manifest.source.id, report.vm_uuid);
        assert_eq!(manifest.disks.len(), expected.len());
        for disk in &manifest.disks {
            let digest = self.store.disk_sha256(id, &disk.name).await.unwrap();
            assert_eq!(
                Some(&digest),
                expected.get(&disk.uuid),
                "disk {} of restore point {id} differs from the VDI at snapshot time",
                disk.name
            );
        }
    }

    /// Our snapshots on the host: none but at most one base.
    async fn assert_tidy(&self) {
        let vm = self.vm().await;
        let ours = xenvault_pool::snapshot::ours(&self.host, &vm).await.unwrap();
        // Snapshot VDIs (with data or CBT metadata) exist only for the one base.
        let all = self.host.call("VDI.get_all_records", vec![]).await.unwrap();
        let snapshot_vdis = xenvault_pool::records::all_records(&all)
            .into_iter()
            .map(|(r, v)| xenvault_pool::records::Vdi::parse(&r, v))
            .filter(|v| v.is_a_snapshot)
            .count();
        let live = self.host.disks(&vm).await.unwrap().len();
        assert!(snapshot_vdis <= live * ours.len(), "{snapshot_vdis} snapshot VDIs for {} base(s)", ours.len());
        let leftovers: Vec<_> = ours.iter().filter(|s| !hygiene::is_base(&s.other_config)).map(|s| &s.uuid).collect();
        assert!(leftovers.is_empty(), "snapshots left behind: {leftovers:?}");
        assert!(ours.len() <= 1, "{} base snapshots: the chain grows", ours.len());
    }
}

#[tokio::test]
async fn full_then_three_incrementals_restore_exactly() {
    let env = env().await;
    let first = env.backup(Level::Inc, Requested::Auto).await;
    assert_eq!(first.level, Level::Full, "{:?}", first.level_reason);
    env.assert_restores_to(&first, &env.digests().await).await;
    let vdis = env.vdis().await;
    for round in 1..=3u64 {
        env.write(&vdis[0], round * 65536 * 7, b"guest data written between backups").await;
        env.scribble("1", round).await;
        let report = env.backup(Level::Inc, Requested::Auto).await;
        env.assert_restores_to(&report, &env.digests().await).await;
        assert_eq!(report.level, Level::Inc);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(report.snapshot.as_ref().unwrap().kept_as.contains("metadata only"), "{:?}", report.snapshot);
        for disk in &report.disks {
            assert_eq!(disk.strategy, Strategy::Cbt, "round {round}: {}", disk.reason);
            assert!(disk.bytes_changed > 0);
            assert!(
                disk.bytes_read <= 4 * disk.bytes_changed,
                "read {} for {} changed",
                disk.bytes_read,
                disk.bytes_changed
            );
            assert!(disk.bytes_read < disk.size / 2, "an incremental read {} of {}", disk.bytes_read, disk.size);
        }
        env.assert_tidy().await;
    }
}

#[tokio::test]
async fn cbt_ranges_across_chunks_pages_and_pieces_restore_exactly() {
    const BLOCK: u64 = 64 << 10;
    const PAGE_SLOTS: u64 = 64;
    const PAGE: u64 = PAGE_SLOTS * BLOCK;
    // Chunks of one CBT block, in small index pages, so that changed ranges cross both.
    let env = env_with(BLOCK as u32, PAGE_SLOTS as u32).await;
    let first = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&first, &env.digests().await).await;
    let vdi = env.vdis().await.remove(0);
    // Guest writes as (offset, length): lone blocks with gaps between them, adjacent blocks
    // across a chunk boundary, a run across an index page boundary, and a run longer than
    // one NBD read (2 MiB) that starts and ends inside blocks and crosses a page.
    let writes = [
        (3 * BLOCK + 100, 10),
        (7 * BLOCK, 1),
        (12 * BLOCK - 7, 14),
        (20 * BLOCK, 3 * BLOCK),
        (PAGE - BLOCK - 5, 2 * BLOCK),
        (2 * PAGE - (1 << 20) - 3, (3 << 20) + 9),
    ];
    let mut blocks = std::collections::BTreeSet::new();
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|n| (n as u8).wrapping_mul(31).wrapping_add(i as u8 + 1)).collect();
        env.write(&vdi, offset, &data).await;
        blocks.extend(offset / BLOCK..=(offset + len - 1) / BLOCK);
    }
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    let disk = report.disks.iter().find(|d| d.vdi_uuid == vdi).unwrap();
    assert_eq!(disk.strategy, Strategy::Cbt, "{}", disk.reason);
    assert_eq!(disk.bytes_changed, blocks.len() as u64 * BLOCK, "CBT marks exactly the written blocks");
    assert_eq!(disk.bytes_read, disk.bytes_changed, "only changed blocks are read");
}

#[tokio::test]
async fn every_level_and_forced_strategy_is_exact() {
    let env = env().await;
    let cases = [
        (Level::Full, Requested::Vhd, Strategy::FullRead),
        (Level::Inc, Requested::Vhd, Strategy::Vhd),
        (Level::Inc, Requested::FullRead, Strategy::FullRead),
        (Level::Full, Requested::Cbt, Strategy::FullRead),
        (Level::Inc, Requested::Cbt, Strategy::Cbt),
        (Level::Diff, Requested::Auto, Strategy::FullRead),
        (Level::Full, Requested::Auto, Strategy::FullRead),
        (Level::Diff, Requested::Auto, Strategy::Cbt),
        (Level::Copy, Requested::Auto, Strategy::FullRead),
        (Level::Inc, Requested::Auto, Strategy::Cbt),
    ];
    let vdis = env.vdis().await;
    for (round, (level, requested, expected)) in cases.into_iter().enumerate() {
        env.write(&vdis[0], (round as u64 + 1) * 3 * 65536 + 512, format!("round {round}").as_bytes()).await;
        env.scribble("0.5", round as u64).await;
        let tally = Tally::new();
        let report = env.backup_showing(&options(level, requested), tally.clone()).await;
        env.assert_restores_to(&report, &env.digests().await).await;
        assert_eq!(report.level, level, "round {round}");
        let bars = tally.states();
        for disk in &report.disks {
            assert_eq!(disk.strategy, expected, "round {round} {level} {requested:?}: {}", disk.reason);
            // The bar is sized to what this strategy reads, and ends full.
            let bar = &bars[&Key::new(Some(&report.vm_uuid), disk.position.parse().ok(), Phase::Backup)];
            let (total, done) = (bar.total, bar.done);
            assert!(bar.finished && bar.label.contains(disk.strategy.label()), "{bar:?}");
            let read = match disk.strategy {
                Strategy::Cbt => disk.bytes_read,
                Strategy::Vhd => disk.bytes_changed,
                Strategy::FullRead => disk.size,
            };
            assert_eq!((total, done), (read, read), "round {round} {}: bar of {} bytes", disk.strategy, disk.size);
        }
        env.assert_tidy().await;
    }
}

#[tokio::test]
async fn cbt_disabled_or_reset_falls_back_with_reason() {
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    let vm = env.vm().await;
    let disks = env.host.disks(&vm).await.unwrap();
    let root = disks[0].1.reference.clone();

    // Disabled: the engine says so and reads another way; it turns CBT back on.
    env.host.call("VDI.disable_cbt", vec![root.as_str().into()]).await.unwrap();
    env.scribble("1", 7).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    let disk = &report.disks[0];
    assert_ne!(disk.strategy, Strategy::Cbt);
    assert!(disk.reason.contains("CBT"), "{}", disk.reason);

    // Reset (disabled and enabled again between runs): the CBT log no longer links.
    env.backup(Level::Inc, Requested::Auto).await;
    env.host.call("VDI.disable_cbt", vec![root.as_str().into()]).await.unwrap();
    env.host.call("VDI.enable_cbt", vec![root.as_str().into()]).await.unwrap();
    env.scribble("1", 8).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    let disk = &report.disks[0];
    assert_ne!(disk.strategy, Strategy::Cbt, "{}", disk.reason);
    assert!(disk.reason.contains("list_changed_blocks") || disk.reason.contains("CBT"), "{}", disk.reason);
    // The other disk kept its chain.
    assert_eq!(report.disks[1].strategy, Strategy::Cbt, "{}", report.disks[1].reason);
    env.assert_tidy().await;
}

#[tokio::test]
async fn xapi_error_fails_cleanly_and_removes_the_snapshot() {
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    // Every SR.get_record fails: metadata collection, after the snapshot, cannot finish.
    let args = vec![
        Value::from("SR.get_record"),
        Value::from("INTERNAL_ERROR"),
        Value::Array(vec![Value::from("injected")]),
        Value::from(""),
    ];
    env.sim.call("sim.inject_fault", args).await.unwrap();
    let report = env.backup(Level::Inc, Requested::Auto).await;
    assert!(matches!(report.status, Status::Failed));
    assert!(report.error.as_deref().unwrap_or_default().contains("INTERNAL_ERROR"), "{:?}", report.error);
    env.assert_tidy().await;
    env.sim.call("sim.clear_faults", vec![]).await.unwrap();
    env.scribble("1", 3).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    assert_eq!(report.disks[0].strategy, Strategy::Cbt, "{}", report.disks[0].reason);
}

#[tokio::test]
async fn cut_nbd_connections_are_retried() {
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    env.scribble("2", 5).await;
    env.sim.call("sim.set_cut", vec![Value::from("nbd"), Value::from((3u64 << 20).to_string())]).await.unwrap();
    let report = env.backup(Level::Full, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    env.assert_tidy().await;
}

#[tokio::test]
async fn cut_exports_fall_back_or_fail_cleanly() {
    let env = env().await;
    env.backup(Level::Full, Requested::Vhd).await;
    env.scribble("1", 9).await;
    env.sim.call("sim.set_cut", vec![Value::from("http"), Value::from((1u64 << 20).to_string())]).await.unwrap();
    let report = env.backup(Level::Inc, Requested::Vhd).await;
    match report.status {
        Status::Ok => env.assert_restores_to(&report, &env.digests().await).await,
        Status::Failed => assert!(report.error.is_some()),
    }
    env.assert_tidy().await;
}

#[tokio::test]
async fn excluded_disks_and_quiesce_fallback_are_reported() {
    let env = env().await;
    let mut options = options(Level::Full, Requested::Auto);
    options.exclude_disks = vec!["1".into()];
    options.quiesce = true;
    let report = env.backup_with(&options).await;
    assert!(matches!(report.status, Status::Ok), "{:?}", report.error);
    assert_eq!(report.disks.len(), 1);
    assert_eq!(report.excluded_disks.len(), 1);
    let snapshot = report.snapshot.as_ref().unwrap();
    assert!(snapshot.quiesce_requested);
    if !snapshot.quiesced {
        assert!(snapshot.note.is_some());
    }
    let manifest = env.store.repository().restore_point(report.restore_point.as_deref().unwrap()).await.unwrap();
    let vdis = env.vdis().await;
    assert_eq!(manifest.disks[0].uuid, vdis[0]);
    let metadata = VmMetadata::from_value(&manifest.metadata).unwrap().expect("VM metadata");
    assert_eq!(metadata.disks.len(), 1);
    assert_eq!(metadata.disks[0].vdi_uuid, vdis[0]);
    assert_eq!(metadata.vm.uuid, env.vm().await.uuid);
    let r = &metadata.records;
    let sections = [r.vbds.len(), r.vdis.len(), r.srs.len(), r.vifs.len(), r.networks.len()];
    assert!(!r.vm.is_empty() && !r.snapshot.is_empty() && sections.iter().all(|&n| n > 0), "{sections:?}");
    assert_eq!(metadata.vifs.len(), r.vifs.len());
    env.assert_tidy().await;
}

#[tokio::test]
async fn xva_backup_exports_back_as_the_same_xva_disks() {
    use sha2::Digest;
    let env = env().await;
    let vdis = env.vdis().await;
    env.write(&vdis[1], 5 << 20, b"data disk content").await;
    let mut options = options(Level::Copy, Requested::Auto);
    options.xva = true;
    let tally = Tally::new();
    let report = env.backup_showing(&options, tally.clone()).await;
    let expected = env.digests().await;
    env.assert_restores_to(&report, &expected).await;
    assert!(report.disks.iter().all(|d| d.transport == xenvault_engine::strategy::Transport::HttpXva));
    // One bar for the archive: sized to its disks, full although zero chunks are left out.
    let disk_bytes: u64 = report.disks.iter().map(|d| d.size).sum();
    let read: u64 = report.disks.iter().map(|d| d.bytes_read).sum();
    assert!(read < disk_bytes, "{read} of {disk_bytes}");
    let bars: Vec<(Key, u64, u64)> = tally.states().into_iter().map(|(k, s)| (k, s.total, s.done)).collect();
    assert_eq!(bars, [(Key::new(Some(&report.vm_uuid), None, Phase::BackupXva), disk_bytes, disk_bytes)]);
    env.assert_tidy().await;

    let manifest = env.store.repository().restore_point(report.restore_point.as_deref().unwrap()).await.unwrap();
    let path = env._dir.path().join("again.xva");
    xenvault_engine::xva::export(env.store.repository(), &manifest, std::fs::File::create(&path).unwrap())
        .await
        .unwrap();
    let mut xva = xenvault_xva::XvaReader::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
    let disks = xva.disks();
    let mut images: BTreeMap<String, Vec<u8>> =
        disks.iter().map(|d| (d.reference.clone(), vec![0u8; d.size.unwrap() as usize])).collect();
    while let Some(chunk) = xva.next_chunk().unwrap() {
        let image = images.get_mut(chunk.disk).unwrap();
        image[chunk.offset as usize..chunk.offset as usize + chunk.data.len()].copy_from_slice(chunk.data);
    }
    let mut rebuilt: Vec<String> = images.values().map(|i| hex::encode(sha2::Sha256::digest(i))).collect();
    let mut wanted: Vec<String> = expected.into_values().collect();
    rebuilt.sort();
    wanted.sort();
    assert_eq!(rebuilt, wanted);
}

#[tokio::test]
async fn a_later_run_cleans_what_an_interrupted_run_left() {
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    // An interrupted run: its snapshot is tagged as ours but was never committed.
    let vm = env.vm().await;
    let left = xenvault_pool::snapshot::take(&env.host, &vm, "crashed-job", false).await.unwrap();
    env.scribble("1", 4).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    assert!(report.cleaned_snapshots.contains(&left.vm.uuid), "{:?}", report.cleaned_snapshots);
    env.assert_tidy().await;
}

/// Flips one byte of the stored copy of `id` (a chunk or an index page) in its pack.
fn flip_stored(env: &Env, id: &xenvault_repo::crypto::ChunkId) {
    let loc = env.store.repository().locate(id).expect("the chunk is stored");
    let file = env._dir.path().join("repo").join(loc.pack.data_object());
    let mut data = std::fs::read(&file).unwrap();
    data[loc.offset as usize + 20] ^= 0x40;
    std::fs::write(&file, data).unwrap();
}

/// The first non-zero chunk of disk `vdi` in a restore point.
async fn first_chunk(env: &Env, report: &VmReport, vdi: &str) -> xenvault_repo::crypto::ChunkId {
    let repo = env.store.repository();
    let manifest = repo.restore_point(report.restore_point.as_deref().unwrap()).await.unwrap();
    let disk = manifest.disks.iter().find(|d| d.uuid == vdi).unwrap();
    let reader = xenvault_repo::DiskReader::new(repo, disk).await.unwrap();
    for slot in 0..disk.slot_count() {
        let id = reader.chunk_id(slot).await.unwrap();
        if !id.is_zero() {
            return id;
        }
    }
    panic!("disk {vdi} is all zeros");
}

/// Runs verify (recording what it finds); the restore points it names as damaged.
async fn verify_damaged(env: &Env) -> Vec<String> {
    let report = xenvault_repo::verify::verify(
        env.store.repository(),
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    report.damaged_restore_points.into_keys().collect()
}

#[tokio::test]
async fn incrementals_after_recorded_damage_restore_exactly() {
    // Small chunks and pages: a lost page is a small part of the disk.
    let env = env_with(64 << 10, 64).await;
    env.scribble("2", 10).await;
    let first = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&first, &env.digests().await).await;
    let vdis = env.vdis().await;

    // A damaged data chunk, recorded by verify: the incremental reads it again.
    flip_stored(&env, &first_chunk(&env, &first, &vdis[0]).await);
    assert_eq!(verify_damaged(&env).await, [first.restore_point.clone().unwrap()]);
    env.scribble("1", 11).await;
    let healed = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&healed, &env.digests().await).await;
    let disk = healed.disks.iter().find(|d| d.vdi_uuid == vdis[0]).unwrap();
    assert_eq!(disk.strategy, Strategy::Cbt, "{}", disk.reason);
    assert!(disk.reason.contains("read again from the snapshot"), "{}", disk.reason);
    assert!(!verify_damaged(&env).await.contains(healed.restore_point.as_ref().unwrap()), "the new point is whole");

    // A lost index page of the base: a full read (deduplicated), said in the reason.
    let repo = env.store.repository();
    let manifest = repo.restore_point(healed.restore_point.as_deref().unwrap()).await.unwrap();
    let page = manifest
        .disks
        .iter()
        .find(|d| d.uuid == vdis[0])
        .unwrap()
        .pages
        .iter()
        .find(|p| !p.is_zero())
        .copied()
        .unwrap();
    flip_stored(&env, &page);
    assert!(verify_damaged(&env).await.contains(healed.restore_point.as_ref().unwrap()));
    env.scribble("1", 12).await;
    let fallback = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&fallback, &env.digests().await).await;
    let disk = fallback.disks.iter().find(|d| d.vdi_uuid == vdis[0]).unwrap();
    assert_eq!(disk.strategy, Strategy::FullRead, "{}", disk.reason);
    assert!(disk.reason.contains("index page"), "{}", disk.reason);
    assert!(disk.bytes_stored < disk.size / 2, "the full read stored {} of {}: no dedup", disk.bytes_stored, disk.size);

    // And the chain goes on with CBT.
    env.scribble("1", 13).await;
    let next = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&next, &env.digests().await).await;
    assert!(next.disks.iter().all(|d| d.strategy == Strategy::Cbt), "{:?}", next.disks);
    let damaged = verify_damaged(&env).await;
    for point in [&fallback, &next] {
        assert!(!damaged.contains(point.restore_point.as_ref().unwrap()), "{damaged:?}");
    }

    // A whole pack deleted: verify records its chunks and pages, the next run still restores.
    let lost = env.store.repository().locate(&first_chunk(&env, &next, &vdis[1]).await).unwrap();
    std::fs::remove_file(env._dir.path().join("repo").join(lost.pack.data_object())).unwrap();
    assert!(verify_damaged(&env).await.contains(next.restore_point.as_ref().unwrap()));
    env.scribble("1", 14).await;
    let after_loss = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&after_loss, &env.digests().await).await;
    assert!(!verify_damaged(&env).await.contains(after_loss.restore_point.as_ref().unwrap()));
    env.assert_tidy().await;
}

#[tokio::test]
async fn one_backup_per_vm_at_a_time() {
    use xenvault_engine::vm_lock::{self, Holder, LOCK_KEY};
    let env = env().await;
    // Two at once on one VM: the second waits for the first; both restore exactly.
    let expected = env.digests().await;
    let (a, b) = tokio::join!(env.backup(Level::Inc, Requested::Auto), env.backup(Level::Inc, Requested::Auto));
    env.assert_restores_to(&a, &expected).await;
    env.assert_restores_to(&b, &expected).await;
    env.assert_tidy().await;

    // A live holder and no waiting: skipped, naming the holder.
    let vm = env.vm().await;
    let held = vm_lock::acquire(&env.host, &vm, "other-job", std::time::Duration::ZERO).await.unwrap();
    let mut no_wait = options(Level::Inc, Requested::Auto);
    no_wait.vm_lock_wait = std::time::Duration::ZERO;
    let skipped = env.backup_with(&no_wait).await;
    assert!(matches!(skipped.status, Status::Failed));
    let error = skipped.error.unwrap_or_default();
    assert!(error.contains("skipped") && error.contains("other-job"), "{error}");
    assert!(skipped.snapshot.is_none(), "no snapshot taken while another run holds the VM");
    held.release(&env.host).await;

    // A holder that died on this host (a kill -9): taken over, and released at the end.
    let dead = Holder {
        host: xenvault_repo::lock::hostname(),
        pid: u32::MAX,
        job: "killed".into(),
        started: chrono::Utc::now(),
    };
    let value = serde_json::to_string(&dead).unwrap();
    env.host.add_to_other_config("VM", &vm.reference, LOCK_KEY, &value).await.unwrap();
    let report = env.backup_with(&no_wait).await;
    env.assert_restores_to(&report, &expected).await;
    assert!(report.warnings.iter().any(|w| w.contains("took over") && w.contains("killed")), "{:?}", report.warnings);
    assert!(!env.vm().await.other_config.contains_key(LOCK_KEY), "the lock is released");

    // xapi copies other_config into snapshots: neither the base snapshot nor the stored
    // VM records carry the run's lock or intent (a restored VM must not look locked).
    let base = xenvault_pool::snapshot::ours(&env.host, &env.vm().await).await.unwrap().remove(0);
    let manifest = env.store.repository().restore_point(report.restore_point.as_deref().unwrap()).await.unwrap();
    let stored = VmMetadata::from_value(&manifest.metadata).unwrap().expect("VM metadata");
    for key in hygiene::RUN_KEYS {
        assert!(!base.other_config.contains_key(key), "the base snapshot carries {key}");
        assert!(!stored.vm.other_config.contains_key(key), "stored VM carries {key}");
        for record in [&stored.records.vm, &stored.records.snapshot] {
            let config = record["other_config"].as_object().expect("a stored other_config");
            assert!(!config.contains_key(key), "a stored VM record carries {key}");
        }
    }
}

#[tokio::test]
async fn an_untagged_snapshot_of_a_killed_run_is_found_by_its_intent() {
    use xenvault_pool::hygiene::TAG_SNAPSHOT_INTENT;
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    // Killed between VM.snapshot and tagging: the intent is on the VM, the snapshot untagged.
    let vm = env.vm().await;
    let name = format!("[xenvault] {VM} 2026-12-04T10:00:00.000Z");
    env.host.add_to_other_config("VM", &vm.reference, TAG_SNAPSHOT_INTENT, &name).await.unwrap();
    let leaked = env.host.call("VM.snapshot", vec![vm.reference.as_str().into(), name.as_str().into()]).await.unwrap();
    let leaked = env.host.vm(leaked.as_str().unwrap()).await.unwrap();
    // The user's own snapshot, even one with our name prefix, is not ours.
    let user =
        env.host.call("VM.snapshot", vec![vm.reference.as_str().into(), "[xenvault] look-alike".into()]).await.unwrap();
    let user = user.as_str().unwrap().to_owned();

    env.scribble("1", 21).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    assert!(report.cleaned_snapshots.contains(&leaked.uuid), "{:?}", report.cleaned_snapshots);
    let vm = env.vm().await;
    assert!(!vm.other_config.contains_key(TAG_SNAPSHOT_INTENT), "the intent is cleared");
    assert!(env.host.vm(&leaked.reference).await.is_err(), "the leaked snapshot is gone");
    assert!(vm.snapshots.contains(&user), "the user's snapshot stays");
    xenvault_pool::snapshot::destroy(&env.host, &user).await;
    env.assert_tidy().await;
}

#[tokio::test]
async fn a_snapshot_xapi_finishes_after_the_next_run_looked_is_still_removed() {
    use xenvault_pool::hygiene::TAG_SNAPSHOT_INTENT;
    use xenvault_pool::snapshot::{INTENT_PENDING_FOR, Intent, intents};
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    // A run killed while xapi was still creating its snapshot (the task goes on without
    // its client), and an intent of a run long ago whose snapshot never came.
    let vm = env.vm().await;
    let now = chrono::Utc::now();
    let pending = Intent { name: format!("[xenvault] {VM} pending"), at: now };
    let settled =
        Intent { name: format!("[xenvault] {VM} never"), at: now - INTENT_PENDING_FOR - chrono::Duration::minutes(1) };
    let value = serde_json::to_string(&[&settled, &pending]).unwrap();
    env.host.add_to_other_config("VM", &vm.reference, TAG_SNAPSHOT_INTENT, &value).await.unwrap();

    // The next run finds no snapshot of that name yet: it keeps the pending intent only.
    env.scribble("1", 31).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    assert_eq!(intents(&env.vm().await), std::slice::from_ref(&pending), "only the pending intent stays");

    // xapi finishes the snapshot: a later run removes it and forgets the intent.
    let late =
        env.host.call("VM.snapshot", vec![vm.reference.as_str().into(), pending.name.as_str().into()]).await.unwrap();
    let late = env.host.vm(late.as_str().unwrap()).await.unwrap();
    env.scribble("1", 32).await;
    let report = env.backup(Level::Inc, Requested::Auto).await;
    env.assert_restores_to(&report, &env.digests().await).await;
    assert!(report.cleaned_snapshots.contains(&late.uuid), "{:?}", report.cleaned_snapshots);
    assert!(env.host.vm(&late.reference).await.is_err(), "the late snapshot is gone");
    assert!(!env.vm().await.other_config.contains_key(TAG_SNAPSHOT_INTENT), "no intent is left");
    env.assert_tidy().await;
}

#[tokio::test]
async fn a_cancelled_backup_removes_its_snapshot_and_commits_nothing() {
    let env = env().await;
    env.backup(Level::Full, Requested::Auto).await;
    let points = env.store.repository().restore_points().await.unwrap().len();
    env.scribble("5", 22).await;
    let cancelled = options(Level::Inc, Requested::Auto);
    let progress = common::CancelMidway::new(Phase::Backup, cancelled.cancel.clone());
    let report = job::backup(&env.host, &env.store, &cancelled, progress.clone()).await.unwrap();
    let at = progress.cancelled_at();
    assert!(at.label.contains(Strategy::Cbt.label()), "cancelled during a CBT transfer: {at:?}");
    let vm_report = &report.vms[0];
    assert!(matches!(vm_report.status, Status::Failed));
    assert!(vm_report.error.as_deref().unwrap_or_default().contains("cancelled"), "{:?}", vm_report.error);
    assert_eq!(env.store.repository().restore_points().await.unwrap().len(), points, "nothing committed");
    env.assert_tidy().await;
    assert!(!env.vm().await.other_config.contains_key(xenvault_engine::vm_lock::LOCK_KEY));
    let locks = std::fs::read_dir(env._dir.path().join("repo/locks")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(locks, 0, "the repository lock is released");

    // The chain goes on from the last committed point; the caller's job and run ids are
    // kept with the restore point and in the report.
    let mut options = options(Level::Inc, Requested::Auto);
    (options.job_id, options.run_id) = (Some("nightly".into()), Some("run-7".into()));
    let job_report = job::backup(&env.host, &env.store, &options, HiddenProgress::shared()).await.unwrap();
    assert_eq!((job_report.job_id.as_str(), job_report.run_id.as_str()), ("nightly", "run-7"));
    let report = &job_report.vms[0];
    env.assert_restores_to(report, &env.digests().await).await;
    assert!(report.disks.iter().all(|d| d.strategy == Strategy::Cbt), "{:?}", report.disks);
    let point = env.store.repository().restore_point(report.restore_point.as_deref().unwrap()).await.unwrap();
    let ids = ["/backup/job_id", "/backup/run_id"].map(|at| point.metadata.pointer(at).and_then(|v| v.as_str()));
    assert_eq!(ids, [Some("nightly"), Some("run-7")]);
}
