//! `xenvault demo`: the main job end to end on a simulated pool, nothing to set up.

use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::JobReport;
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::Level;
use xenvault_pool::config::{ConfigStore, PoolEntry, ServerTrust};
use xenvault_pool::{Host, Value};
use xenvault_sim::{DemoDisks, SimConfig, Simulator};
use xenvault_types::units;

/// Used when XENVAULT_PASSPHRASE is not set: the demo repository is not a secret.
const DEMO_PASSPHRASE: &str = "xenvault-demo";
const POOL: &str = "demo";

#[derive(Subcommand)]
pub enum Commands {
    /// Start a simulated pool, back up every VM (full), write 1% into the disks, back up
    /// again (CBT + NBD incremental), verify both restore points, and summarise.
    Demo {
        /// Where the simulated pool, the repository and the configuration live.
        #[arg(long, default_value = ".demo")]
        dir: PathBuf,
    },
}

pub async fn run(command: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Demo { dir } = command;
    std::fs::create_dir_all(&dir)?;
    println!("== starting the simulated pool in {}", dir.join("sim").display());
    let config = SimConfig { demo_disks: DemoDisks::Fixtures, ..SimConfig::new(dir.join("sim")) };
    let sim = Simulator::start(config).await?;
    println!("   listening on {}", sim.url);

    let passphrase = match crate::environment::var("XENVAULT_PASSPHRASE") {
        Some(p) => p,
        None => {
            println!(
                "   repository passphrase: {DEMO_PASSPHRASE:?} (the demo's fixed one; set XENVAULT_PASSPHRASE to choose)"
            );
            DEMO_PASSPHRASE.to_owned()
        }
    };
    let store = open_or_init(&dir.join("repo"), &passphrase).await?;
    println!("== repository {}", store.location());

    let configs = ConfigStore::at(dir.join("config.toml"));
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim.cert_pem)
        .ok_or_else(|| anyhow::anyhow!("the simulator's certificate is not PEM"))?;
    let entry =
        PoolEntry { url: sim.url.clone(), user: sim.user.clone(), tls: ServerTrust::pin_sha256_hex(&fingerprint)? };
    configs.add_pool(POOL, entry, &sim.password)?;
    let host = Host::connect(&configs.login(POOL, None)?).await?;
    println!("== pool {POOL:?} registered in {} (certificate pinned)", configs.path().display());

    let result = demo(&host, &store).await;
    host.logout().await;
    sim.stop().await;
    result
}

async fn demo(host: &Host, store: &Store) -> anyhow::Result<ExitCode> {
    let bars = crate::progress::Bars::new(false);
    let mut options = BackupOptions { selectors: vec![Selector::All], level: Level::Full, ..Default::default() };

    println!("== full backup of every VM");
    let full = job::backup(host, store, &options, bars.clone()).await?;
    bars.clear();
    print!("{}", full.summary());
    let full_digests = digests(host, &full).await?;

    println!("== guests write 1% of every disk (scattered 4 KiB writes)");
    for (seed, vdi) in full_digests.keys().enumerate() {
        let args = vec![Value::from(vdi.as_str()), "1".into(), "4096".into(), Value::from(seed.to_string())];
        host.call("sim.scribble", args).await?;
    }

    println!("== incremental backup of every VM");
    options.level = Level::Inc;
    let incremental = job::backup(host, store, &options, bars.clone()).await?;
    bars.clear();
    print!("{}", incremental.summary());
    let inc_digests = digests(host, &incremental).await?;

    println!("== verifying: every disk of both restore points rebuilt from the repository");
    let mut bad = 0;
    for (report, expected) in [(&full, &full_digests), (&incremental, &inc_digests)] {
        bad += verify(store, report, expected).await?;
    }
    println!("\n== summary (per VM and disk: strategy, read from the host vs changed, stored, time)");
    let rows: Vec<Vec<String>> = [&full, &incremental]
        .iter()
        .flat_map(|report| report.vms.iter())
        .flat_map(|vm| {
            vm.disks.iter().map(move |disk| {
                vec![
                    vm.level.to_string(),
                    vm.vm_name.clone(),
                    disk.position.to_string(),
                    disk.strategy.to_string(),
                    units::bytes(disk.bytes_read),
                    units::bytes(disk.bytes_changed),
                    units::bytes(disk.bytes_stored),
                    format!("{:.2} s", disk.duration_secs),
                ]
            })
        })
        .collect();
    crate::output::table(
        &["LEVEL", "VM", "DISK", "STRATEGY", "READ", "CHANGED", "STORED", "TIME"],
        &rows,
        &[2, 4, 5, 6, 7],
    );
    let failed = full.totals.vms_failed + incremental.totals.vms_failed;
    if failed > 0 || bad > 0 {
        println!("{failed} VM backup(s) failed, {bad} disk(s) did not verify");
        return Ok(ExitCode::from(crate::exit::FAILURE));
    }
    // A hint that works as typed: the binary by its full path, the repository by an absolute one.
    let binary = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "xenvault".into());
    let repo = std::path::absolute(store.location())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| store.location().to_owned());
    let secret = if crate::environment::var("XENVAULT_PASSPHRASE").is_some() {
        String::new()
    } else {
        format!("XENVAULT_PASSPHRASE={DEMO_PASSPHRASE:?} ")
    };
    println!("all restore points verified; list them with:\n  {secret}{binary} snapshots --repo {repo}");
    Ok(ExitCode::SUCCESS)
}

async fn open_or_init(path: &Path, passphrase: &str) -> anyhow::Result<Store> {
    let location = path.to_str().ok_or_else(|| anyhow::anyhow!("the demo directory must be UTF-8"))?;
    let backend = xenvault_repo::backend::BackendOptions::default();
    if let Ok(store) = Store::open(location, &backend, Some(passphrase)).await {
        return Ok(store);
    }
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase(passphrase)),
        ..Default::default()
    };
    Ok(Store::from_repository(xenvault_repo::Repository::init(location, &backend, options).await?))
}

/// sim.sha256 of every backed-up disk now (the snapshot was just taken: same content).
async fn digests(host: &Host, report: &JobReport) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for disk in report.vms.iter().flat_map(|vm| &vm.disks) {
        let digest = host.call("sim.sha256", vec![Value::from(disk.vdi_uuid.as_str())]).await?;
        out.insert(disk.vdi_uuid.clone(), digest.as_str().unwrap_or_default().to_owned());
    }
    Ok(out)
}

/// Rebuilds each disk of each restore point; returns how many differ.
async fn verify(store: &Store, report: &JobReport, expected: &BTreeMap<String, String>) -> anyhow::Result<usize> {
    let mut bad = 0;
    for vm in &report.vms {
        let Some(id) = &vm.restore_point else { continue };
        for disk in &vm.disks {
            let digest = store.disk_sha256(id, &disk.position).await?;
            let ok = expected.get(&disk.vdi_uuid) == Some(&digest);
            println!(
                "   {} {} disk {}: {}",
                id.get(..8).unwrap_or(id),
                vm.vm_name,
                disk.position,
                if ok { "ok" } else { "DIFFERS" }
            );
            bad += usize::from(!ok);
        }
    }
    Ok(bad)
}
