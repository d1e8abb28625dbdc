//! `xenvault node`: a scale-out backup node. It registers in the shared catalog, takes VM
//! tasks from its queue (within its concurrency and affinity), backs them up into the
//! job's repository and records the results, until SIGTERM or Ctrl-C (what it runs then
//! is cancelled and given back to the queue). See docs/scale-out.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use xenvault_catalog::{Affinity, Catalog, KEY_FILE, NodeInfo};
use xenvault_node::worker::{self, NodeOptions};

#[derive(Subcommand)]
pub enum Commands {
    /// Run a scale-out backup node on a shared PostgreSQL catalog.
    Node(NodeArgs),
}

#[derive(Args)]
pub struct NodeArgs {
    /// The shared catalog: postgres://user@host:port/database.
    #[arg(long, env = "XENVAULT_CATALOG")]
    catalog: String,
    /// This node's name, unique among the nodes (a restarted node keeps its name).
    #[arg(long)]
    name: String,
    /// VMs backed up at once.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Take only VMs of this pool (pool=NAME) or on this host (host=NAME); repeatable.
    /// Without it the node takes any VM.
    #[arg(long, value_parser = parse_affinity)]
    affinity: Vec<Affinity>,
    /// Seconds a task stays this node's without a heartbeat; after that another node may
    /// take it (the node renews its leases every third of this).
    #[arg(long, default_value_t = 30)]
    lease_secs: u64,
    /// Holds the catalog's key file (the server's, copied): it opens the pools' passwords
    /// and the repositories' passphrases.
    #[arg(long, env = "XENVAULT_DATA_DIR", default_value = "/var/lib/xenvault")]
    data_dir: PathBuf,
    /// Where repositories' immutable objects are cached [default: DATA_DIR/cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

fn parse_affinity(text: &str) -> Result<Affinity, String> {
    text.parse()
}

pub async fn run(Commands::Node(args): Commands) -> Result<ExitCode> {
    if !(args.catalog.starts_with("postgres://") || args.catalog.starts_with("postgresql://")) {
        bail!("--catalog must be a postgres:// URL: nodes share the server's PostgreSQL catalog");
    }
    if args.concurrency == 0 || args.lease_secs < 3 {
        bail!("--concurrency must be at least 1 and --lease-secs at least 3");
    }
    // Without the server's key the sealed secrets cannot be opened; a new key made here
    // would only fail later, VM by VM.
    let key = args.data_dir.join(KEY_FILE);
    if !key.exists() {
        bail!("{} is missing: copy the server's key file into the node's --data-dir", key.display());
    }
    let catalog = Catalog::open(&args.data_dir, Some(&args.catalog)).await.context("opening the catalog")?;
    let options = NodeOptions {
        info: NodeInfo {
            name: args.name,
            concurrency: args.concurrency,
            lease: Duration::from_secs(args.lease_secs),
            affinity: args.affinity,
        },
        cache_dir: args.cache_dir.unwrap_or_else(|| args.data_dir.join("cache")),
        poll: Duration::from_millis(500),
    };
    let stop = CancellationToken::new();
    let node = tokio::spawn(worker::run(Arc::new(catalog), options.clone(), stop.clone()));
    println!("node {} running (concurrency {})", options.info.name, options.info.concurrency);
    tokio::select! {
        signal = crate::server_cmds::stop_signal() => {
            signal?;
            eprintln!("stopping: the VMs this node runs are cancelled and given back to the queue");
            stop.cancel();
        }
        _ = stop.cancelled() => {}
    }
    node.await.context("the node's loop")?.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}
