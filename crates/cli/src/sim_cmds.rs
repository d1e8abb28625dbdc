//! `xenvault sim ...`: run the XenAPI simulator, and poke a running one (guest
//! writes, scribbles, disk digests) over its wire protocol.

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use xenvault_sim::client::SimClient;
use xenvault_sim::{BootCrash, CallFault, DEFAULT_PASSWORD, DemoDisks, Faults, SimConfig, Simulator};

#[derive(Subcommand)]
pub enum Commands {
    /// The XenAPI pool simulator.
    #[command(subcommand)]
    Sim(SimCommand),
}

#[derive(Subcommand)]
pub enum SimCommand {
    /// Run a simulator in the foreground (prints `listening on URL` once ready).
    Serve(ServeArgs),
    /// Write bytes into a VDI as the guest would (CBT sees it).
    Write {
        #[command(flatten)]
        target: Target,
        /// VDI ref or uuid.
        vdi: String,
        offset: u64,
        /// Data to write, base64 (or use --file).
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Scattered random guest writes over PERCENT of a VDI (deterministic by seed).
    Scribble {
        #[command(flatten)]
        target: Target,
        vdi: String,
        percent: f64,
        #[arg(long, default_value_t = 65536)]
        write_size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// SHA-256 of a VDI's whole virtual disk.
    Sha256 {
        #[command(flatten)]
        target: Target,
        vdi: String,
    },
}

#[derive(Args)]
pub struct Target {
    /// The simulator's URL.
    #[arg(long, env = "XENVAULT_SIM_URL", default_value = "https://127.0.0.1:8443")]
    url: String,
    #[arg(long, env = "XENVAULT_SIM_PASSWORD", default_value = DEFAULT_PASSWORD)]
    password: String,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Pool database, disks and certificate (kept across restarts).
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long, default_value = DEFAULT_PASSWORD)]
    password: String,
    /// Plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// NBD port on the listen address (0: any free port). Without it: xapi's 10809,
    /// or any free port when another simulator already holds 10809.
    #[arg(long)]
    nbd_port: Option<u16>,
    /// Seed the demo VMs with blank disks of this many MiB instead of real file systems.
    #[arg(long)]
    blank_disks_mib: Option<u64>,
    /// Also seed this many halted VMs fleet-0001... (tag `fleet`), clones of the template
    /// sharing its disk (first start only).
    #[arg(long, default_value_t = 0)]
    fleet_vms: usize,
    /// Fail a call: METHOD=CODE[,PARAM...][:TIMES] (METHOD may be `*`). Repeatable.
    #[arg(long = "fail-call", value_parser = CallFault::parse)]
    fail_calls: Vec<CallFault>,
    /// Cut every HTTP transfer after this many bytes.
    #[arg(long)]
    cut_http_after: Option<u64>,
    /// Cut every NBD connection after this many bytes of data.
    #[arg(long)]
    cut_nbd_after: Option<u64>,
    /// Latency added to every RPC call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Transfer bandwidth cap, bytes per second.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Answer VM.snapshot_with_quiesce with MESSAGE_REMOVED, like xapi 24 and later.
    #[arg(long)]
    quiesce_removed: bool,
    /// Crash VMs (name glob or uuid) this many seconds after each start: VM=SECONDS. Repeatable.
    #[arg(long = "crash-on-boot", value_parser = BootCrash::parse)]
    crash_on_boot: Vec<BootCrash>,
    /// How long after a start the guest agent of a VM with guest tools reports, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    guest_agent_delay_ms: u64,
}

pub async fn run(cmd: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Sim(cmd) = cmd;
    match cmd {
        SimCommand::Serve(args) => serve(args).await,
        SimCommand::Write { target, vdi, offset, data, file } => {
            let bytes = match (data, file) {
                (Some(d), _) => base64::engine::general_purpose::STANDARD.decode(d).context("--data is not base64")?,
                (None, Some(f)) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                (None, None) => anyhow::bail!("give --data or --file"),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            sim_call(&target, "sim.write", vec![vdi.into(), offset.to_string().into(), encoded.into()]).await?;
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Scribble { target, vdi, percent, write_size, seed } => {
            let params =
                vec![vdi.into(), percent.to_string().into(), write_size.to_string().into(), seed.to_string().into()];
            let count = sim_call(&target, "sim.scribble", params).await?;
            println!("{} writes", count.as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Sha256 { target, vdi } => {
            let digest = sim_call(&target, "sim.sha256", vec![vdi.into()]).await?;
            println!("{}", digest.as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn sim_call(
    target: &Target,
    method: &str,
    params: Vec<xenvault_xapi_wire::Value>,
) -> anyhow::Result<xenvault_xapi_wire::Value> {
    let client = SimClient::login(&target.url, &target.password).await.context("logging in to the simulator")?;
    let result = client.call(method, params).await.with_context(|| format!("{method} failed"))?;
    client.logout().await.ok();
    Ok(result)
}

/// The port xapi-nbd listens on.
const XAPI_NBD_PORT: u16 = 10809;

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = SimConfig::new(&args.state_dir);
    config.listen = args.listen;
    config.password = args.password;
    config.plain_http = args.plain_http;
    config.nbd_port = args.nbd_port.unwrap_or_else(|| {
        let xapi_port = SocketAddr::new(args.listen.ip(), XAPI_NBD_PORT);
        if std::net::TcpListener::bind(xapi_port).is_ok() { XAPI_NBD_PORT } else { 0 }
    });
    config.quiesce_removed = args.quiesce_removed;
    config.fleet_vms = args.fleet_vms;
    config.demo_disks = match args.blank_disks_mib {
        Some(mib) => DemoDisks::Blank(mib << 20),
        None => DemoDisks::Fixtures,
    };
    config.faults = Faults {
        calls: args.fail_calls,
        cut_http_after: args.cut_http_after,
        cut_nbd_after: args.cut_nbd_after,
        latency_ms: args.latency_ms,
        bandwidth: args.bandwidth,
        boot_crashes: args.crash_on_boot,
    };
    config.guest_agent_delay = std::time::Duration::from_millis(args.guest_agent_delay_ms);
    let handle = Simulator::start(config).await.context("starting the simulator")?;
    println!("listening on {}", handle.url);
    std::io::stdout().flush().ok();
    eprintln!("NBD on port {}, state in {}", handle.nbd_port, handle.state_dir.display());
    eprintln!("log in as {} with password {:?}", handle.user, handle.password);
    if !args.plain_http {
        let fingerprint = xenvault_tls::pem_fingerprint_sha256(handle.cert_pem.as_bytes())
            .context("reading the simulator's certificate")?;
        eprintln!("certificate SHA-256 fingerprint {fingerprint}");
        eprintln!(
            "register it: XENVAULT_POOL_PASSWORD='{}' xenvault pool add sim --url {} --user {} --fingerprint {fingerprint}",
            handle.password, handle.url, handle.user
        );
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.stop().await;
    Ok(ExitCode::SUCCESS)
}
