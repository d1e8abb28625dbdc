//! `xenvault pool add|edit|remove|list|check|vms|srs|networks|hosts`: the pools backups
//! connect to, and what they hold.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::ExitKind;
use crate::output::{table, time};
use crate::repo_cmds::{RepoArgs, print_json};
use xenvault_pool::Host;
use xenvault_pool::config::{self, ConfigStore, PoolEntry, PoolLogin, ServerTrust};
use xenvault_pool::inventory::{self, LastRestorePoint};
use xenvault_types::units;

#[derive(Subcommand)]
pub enum Commands {
    /// Register, list and check pool connections; list a pool's VMs, SRs, networks, hosts.
    #[command(subcommand)]
    Pool(PoolCommand),
}

/// Where the pool configuration lives (`--config`, `XENVAULT_CONFIG`, or the XDG config dir).
#[derive(Args, Clone, Default)]
pub struct ConfigArg {
    #[arg(long, env = "XENVAULT_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn store(&self) -> Result<ConfigStore> {
        let path = match &self.config {
            Some(path) => path.clone(),
            None => crate::environment::config_path()?,
        };
        Ok(ConfigStore::at(path))
    }

    /// The pool's login; `XENVAULT_POOL_PASSWORD` overrides the stored password.
    pub fn login(&self, pool: &str) -> Result<PoolLogin> {
        Ok(self.store()?.login(pool, crate::environment::pool_password())?)
    }
}

/// How to trust the pool's certificate. Without either flag an https pool must present a
/// certificate this machine trusts, or (on a terminal) the user accepts its fingerprint.
#[derive(Args, Clone, Default)]
pub struct TrustArgs {
    /// Accept any TLS certificate (encrypted but not authenticated).
    #[arg(long, conflicts_with = "fingerprint")]
    insecure: bool,
    /// SHA-256 fingerprint of the host certificate to pin (hex, colons allowed).
    #[arg(long)]
    fingerprint: Option<String>,
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Add a pool after logging in to it. The password comes from --password-file,
    /// XENVAULT_POOL_PASSWORD, or a prompt on a terminal.
    Add {
        name: String,
        /// The pool master, e.g. https://10.0.0.1
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "root")]
        user: String,
        #[command(flatten)]
        trust: TrustArgs,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change a pool's URL, user, trust or password (checked by logging in before saving).
    Edit {
        name: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        /// New password from this file (or XENVAULT_POOL_PASSWORD; else the stored one).
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Forget a pool and its stored password.
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List registered pools.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Log in to a pool and show what it is.
    Check {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The pool's VMs: power state, host, disks, size, tags (and newest restore point with --repo).
    Vms {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        repo: Option<RepoArgs>,
    },
    /// The pool's storage repositories (where restored disks can go).
    Srs {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The pool's networks (targets of --network-map).
    Networks {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The pool's hosts.
    Hosts {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn usage(message: String) -> anyhow::Error {
    anyhow!(message).context(ExitKind::Usage)
}

/// `http(s)://host[:port]`, nothing else.
fn check_url(text: &str) -> Result<url::Url> {
    let url = url::Url::parse(text)
        .map_err(|e| usage(format!("--url {text:?} is not a URL ({e}); e.g. https://10.0.0.1")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none_or(str::is_empty) {
        return Err(usage(format!("--url {text:?}: give https://HOST (or http://HOST)")));
    }
    Ok(url)
}

/// The password from a file, the environment, or a prompt on a terminal.
fn password(file: Option<&PathBuf>, pool: &str) -> Result<Option<String>> {
    if let Some(path) = file {
        return Ok(Some(config::read_password_file(path)?));
    }
    if let Some(p) = crate::environment::pool_password() {
        return Ok(Some(p));
    }
    if crate::prompt::interactive() {
        return crate::prompt::secret(&format!("password for pool {pool}: ")).map(Some);
    }
    Ok(None)
}

/// Logs in with `login`; refused credentials exit with AUTH.
async fn log_in(login: &PoolLogin) -> Result<Host> {
    Host::connect(login)
        .await
        .map_err(crate::backup_cmds::auth_kind)
        .with_context(|| format!("logging in to {} as {}", login.entry.url, login.entry.user))
}

/// The trust to store: what the flags say, else system roots when the host's certificate
/// passes them, else (on a terminal) its fingerprint once the user accepts it.
async fn settle_trust(login: &mut PoolLogin, trust: &TrustArgs, url: &url::Url) -> Result<Host> {
    if trust.insecure {
        login.entry.tls = ServerTrust::Insecure;
    } else if let Some(f) = &trust.fingerprint {
        login.entry.tls = ServerTrust::pin_sha256_hex(f).map_err(|e| usage(e.to_string()))?;
    }
    let first = Host::connect(login).await;
    let untrusted = match first {
        Ok(host) => return Ok(host),
        Err(e) if e.is_auth() || login.entry.tls != ServerTrust::SystemRoots || url.scheme() != "https" => {
            return Err(crate::backup_cmds::auth_kind(e)).with_context(|| format!("logging in to {}", url));
        }
        Err(e) => e,
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let seen = tokio::task::spawn_blocking(move || {
        xenvault_tls::server_fingerprint(&host, port, std::time::Duration::from_secs(15))
    })
    .await?
    .map_err(|_| anyhow::Error::new(untrusted).context(format!("connecting to {url}")))?;
    if !crate::prompt::interactive() {
        return Err(usage(format!(
            "{url} presents a certificate this machine does not trust, SHA-256 fingerprint {seen}; compare it with the \
             host's (on the host: openssl x509 -noout -fingerprint -sha256 -in /etc/xensource/xapi-ssl.pem) and give \
             --fingerprint {seen}, or --insecure"
        )));
    }
    eprintln!("{url} presents a certificate this machine does not trust.");
    eprintln!("SHA-256 fingerprint: {seen}");
    eprintln!("(on the host: openssl x509 -noout -fingerprint -sha256 -in /etc/xensource/xapi-ssl.pem)");
    if !crate::prompt::yes_no("Trust this certificate (it is pinned: another certificate will be refused)?")? {
        return Err(usage("certificate not trusted: nothing saved".into()));
    }
    login.entry.tls = ServerTrust::pin_sha256_hex(&seen)?;
    log_in(login).await
}

fn trust_text(tls: &ServerTrust) -> String {
    match tls {
        ServerTrust::SystemRoots => "verify".to_owned(),
        ServerTrust::Insecure => "insecure".to_owned(),
        ServerTrust::PinSha256(_) => format!("pinned {}", tls.pinned_sha256_hex().unwrap_or_default()),
        ServerTrust::CaPem(_) | ServerTrust::PemPinOrCa(_) => "CA certificate".to_owned(),
    }
}

/// Logs in as `login` says (settling the certificate trust) and saves it.
async fn check_and_save(store: &ConfigStore, mut login: PoolLogin, trust: &TrustArgs, verb: &str) -> Result<ExitCode> {
    let url = check_url(&login.entry.url)?;
    let host = settle_trust(&mut login, trust, &url).await?;
    let summary = host.describe().await;
    host.logout().await;
    let summary = summary?;
    store.add_pool(&login.name, login.entry.clone(), &login.password)?;
    println!(
        "pool {} {verb} in {}: logged in to {} (master {}, {} VMs), certificate {}",
        login.name,
        store.path().display(),
        login.entry.url,
        summary.master,
        summary.vms,
        trust_text(&login.entry.tls)
    );
    Ok(ExitCode::SUCCESS)
}

async fn connect(config: &ConfigArg, name: &str) -> Result<Host> {
    log_in(&config.login(name)?).await
}

pub async fn run(command: Commands) -> Result<ExitCode> {
    let Commands::Pool(command) = command;
    match command {
        PoolCommand::Add { name, url, user, trust, password_file, config } => {
            check_url(&url)?;
            let password = password(password_file.as_ref(), &name)?.ok_or_else(|| {
                usage("no pool password: give --password-file or XENVAULT_POOL_PASSWORD (or run on a terminal to be asked)".into())
            })?;
            let login = PoolLogin { name, entry: PoolEntry { url, user, tls: ServerTrust::SystemRoots }, password };
            check_and_save(&config.store()?, login, &trust, "saved").await
        }
        PoolCommand::Edit { name, url, user, trust, password_file, config } => {
            let store = config.store()?;
            let mut login = config.login(&name)?;
            if let Some(url) = url {
                login.entry.url = url;
                // A new address gets its certificate checked afresh.
                login.entry.tls = ServerTrust::SystemRoots;
            }
            if let Some(user) = user {
                login.entry.user = user;
            }
            if let Some(file) = &password_file {
                login.password = config::read_password_file(file)?;
            }
            if trust.insecure || trust.fingerprint.is_some() {
                login.entry.tls = ServerTrust::SystemRoots;
            }
            check_and_save(&store, login, &trust, "updated").await
        }
        PoolCommand::Remove { name, config } => {
            let store = config.store()?;
            if !store.remove_pool(&name)? {
                let known: Vec<String> = store.load()?.pools.into_keys().collect();
                return Err(usage(format!(
                    "no pool named {name:?}; registered: {}",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                )));
            }
            println!("pool {name} removed from {}", store.path().display());
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::List { json, config } => {
            let pools = config.store()?.load()?.pools;
            if json {
                let list: Vec<_> = pools
                    .iter()
                    .map(|(name, p)| serde_json::json!({"name": name, "url": p.url, "user": p.user, "tls": p.tls}))
                    .collect();
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = pools
                    .iter()
                    .map(|(name, p)| vec![name.clone(), p.url.clone(), p.user.clone(), trust_text(&p.tls)])
                    .collect();
                table(&["NAME", "URL", "USER", "CERTIFICATE"], &rows, &[]);
            }
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Check { name, json, config } => {
            let host = connect(&config, &name).await?;
            let summary = host.describe().await;
            host.logout().await;
            let summary = summary?;
            if json {
                print_json(&summary)?;
            } else {
                // xapi leaves a pool's name empty until someone sets it; XenCenter shows the master then.
                let label = if summary.pool_name.is_empty() {
                    format!("unnamed pool of {}", summary.master)
                } else {
                    summary.pool_name.clone()
                };
                println!(
                    "pool {name}: {label} ({}), master {}, {} host(s), {} VM(s), API {}",
                    summary.pool_uuid, summary.master, summary.hosts, summary.vms, summary.api_version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Vms { name, json, config, repo } => {
            let host = connect(&config, &name).await?;
            let vms = inventory::vms(host.client()).await;
            host.logout().await;
            let mut vms = vms?;
            if let Some(repo) = repo {
                let points = repo.open().await?.restore_points().await.map_err(crate::repo_cmds::classify)?;
                let newest =
                    points.iter().map(|m| (m.source.id.as_str(), LastRestorePoint { id: m.id.clone(), time: m.time }));
                inventory::add_restore_points(&mut vms, newest);
            }
            if json {
                return print_json(&vms).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = vms
                .iter()
                .map(|v| {
                    let last = v
                        .last_restore_point
                        .as_ref()
                        .map(|p| format!("{} {}", &p.id[..p.id.len().min(8)], time(p.time)));
                    vec![
                        v.name.clone(),
                        v.uuid.clone(),
                        v.power_state.clone(),
                        v.host.clone(),
                        v.disks.to_string(),
                        units::bytes(v.size),
                        v.tags.join(","),
                        last.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["NAME", "UUID", "POWER", "HOST", "DISKS", "SIZE", "TAGS", "LAST RESTORE POINT"], &rows, &[4, 5]);
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Srs { name, json, config } => {
            let host = connect(&config, &name).await?;
            let srs = inventory::srs(host.client()).await;
            host.logout().await;
            let srs = srs?;
            if json {
                return print_json(&srs).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = srs
                .iter()
                .map(|s| {
                    let notes = [(s.default, "default"), (s.shared, "shared")]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>();
                    vec![
                        s.name.clone(),
                        s.uuid.clone(),
                        s.kind.clone(),
                        units::bytes(s.size),
                        units::bytes(s.used),
                        notes.join(","),
                    ]
                })
                .collect();
            table(&["NAME", "UUID", "TYPE", "SIZE", "USED", ""], &rows, &[3, 4]);
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Networks { name, json, config } => {
            let host = connect(&config, &name).await?;
            let networks = inventory::networks(host.client()).await;
            host.logout().await;
            let networks = networks?;
            if json {
                return print_json(&networks).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = networks
                .iter()
                .map(|n| {
                    vec![n.name.clone(), n.uuid.clone(), n.bridge.clone(), n.vifs.to_string(), n.purpose.join(",")]
                })
                .collect();
            table(&["NAME", "UUID", "BRIDGE", "VIFS", "PURPOSE"], &rows, &[3]);
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Hosts { name, json, config } => {
            let host = connect(&config, &name).await?;
            let hosts = inventory::hosts(host.client()).await;
            host.logout().await;
            let hosts = hosts?;
            if json {
                return print_json(&hosts).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    let role = match (h.master, h.enabled) {
                        (true, true) => "master",
                        (false, true) => "member",
                        (_, false) => "disabled",
                    };
                    vec![h.name.clone(), h.uuid.clone(), h.address.clone(), role.into(), h.running_vms.to_string()]
                })
                .collect();
            table(&["NAME", "UUID", "ADDRESS", "ROLE", "RUNNING VMS"], &rows, &[4]);
            Ok(ExitCode::SUCCESS)
        }
    }
}
