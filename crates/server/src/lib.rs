//! `xenvault server`: the long-running service. It serves the REST API (HTTPS, a
//! self-signed certificate unless given one) over the catalog and the job runner,
//! authenticates every call (API tokens, web sessions), publishes its OpenAPI document and
//! Prometheus metrics, and shuts down gracefully.

mod api;
mod auth;
pub mod config;
pub mod config_backup;
mod error;
mod executor;
mod extract;
mod listener;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use xenvault_catalog::{Catalog, Role};
use xenvault_tls::ServerIdentity;

pub use auth::{CSRF_HEADER, SESSION_COOKIE, required_role};
pub use config::ServerConfig;
pub use error::{ErrorBody, StartError};

/// What every handler reaches.
#[derive(Clone)]
pub struct AppState {
    catalog: Arc<Catalog>,
    roles: Arc<auth::RouteRoles>,
    started: Instant,
    /// Cancelled when the server stops: long answers (event streams) end with it.
    stopping: CancellationToken,
    /// Repositories opened for browsing and restores.
    repositories: Arc<api::restore_points::OpenRepositories>,
    /// Restores running in the background.
    restores: Arc<api::restores::RunningRestores>,
    /// The repositories' cache and the file restores' root.
    dirs: Arc<config::WorkDirs>,
    /// Runs jobs: the scheduler, run now, cancel.
    executor: Arc<executor::Executor>,
    /// Restore points' disks served over NBD.
    instant: Arc<api::instant::InstantAccess>,
    /// Repository verifies running in the background.
    verifies: Arc<api::verify::RunningVerifies>,
    /// The settings the server started with (config-backup jobs back them up).
    config: Arc<ServerConfig>,
}

/// The first admin, made on the first start of an empty catalog.
#[derive(Debug, Clone)]
pub struct FirstAdmin {
    pub user: String,
    /// Set when the server generated it (show it once); none when it came from the config.
    pub generated_password: Option<String>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    fingerprint: String,
    first_admin: Option<FirstAdmin>,
    interrupted_runs: usize,
    stopping: CancellationToken,
    executor: Arc<executor::Executor>,
    shutdown_timeout: Duration,
    serving: tokio::task::JoinHandle<()>,
}

pub const FIRST_ADMIN: &str = "admin";

impl Server {
    /// Opens the catalog (marking runs a crash left running as interrupted), makes the
    /// first admin if there is no user, loads or makes the TLS identity, listens, and
    /// starts running jobs (after removing the snapshots interrupted runs left).
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        let catalog = Catalog::open(&config.data_dir, config.catalog.as_deref()).await?;
        if config.scale_out {
            xenvault_node::planner::join(&catalog, config.node_name.as_deref()).await.map_err(StartError::Config)?;
        }
        let settings = Arc::new(config.clone());
        let interrupted = catalog.interrupt_unfinished_runs().await?;
        for run in &interrupted {
            tracing::warn!(run = %run.id, job = %run.job_id, "run left unfinished by the last server stop: marked interrupted");
        }
        for restore in catalog.interrupt_unfinished_restores().await? {
            tracing::warn!(restore = %restore.id, "restore left unfinished by the last server stop: marked interrupted");
        }
        let first_admin = first_admin(&catalog, config.admin_password.as_deref()).await?;
        let identity = tls_identity(&config)?;
        let fingerprint = identity.fingerprint().map_err(|e| StartError::Tls(e.to_string()))?;
        let tls = identity.server_config().map_err(|e| StartError::Tls(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;

        let catalog = Arc::new(catalog);
        let dirs = Arc::new(config.work_dirs());
        let executor = executor::Executor::load(catalog.clone(), xenvault_notify::Notifier::new(config.smtp)).await?;
        let stopping = CancellationToken::new();
        if catalog.owner().is_some() {
            tokio::spawn(xenvault_node::planner::keep_alive(catalog.clone(), stopping.clone()));
        }
        let (routes, doc) = api::routes();
        let state = AppState {
            catalog,
            roles: Arc::new(auth::RouteRoles::from_openapi(&doc)),
            started: Instant::now(),
            stopping: stopping.clone(),
            repositories: Default::default(),
            restores: Default::default(),
            dirs,
            executor: executor.clone(),
            instant: Arc::new(api::instant::InstantAccess::new(config.instant_access_address)),
            verifies: Default::default(),
            config: settings,
        };
        let interrupted_runs = interrupted.len();
        executor.run(state.clone(), interrupted);
        let router = api::finish(routes, doc, state).merge(web::router());
        let serving = tokio::spawn(listener::serve(listener, tls, router, stopping.clone()));
        Ok(Server {
            addr,
            fingerprint,
            first_admin,
            interrupted_runs,
            stopping,
            executor,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            serving,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SHA-256 of the server's certificate (colon-separated hex), for clients to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn first_admin(&self) -> Option<&FirstAdmin> {
        self.first_admin.as_ref()
    }

    /// How many runs the last stop left unfinished (now marked interrupted).
    pub fn interrupted_runs(&self) -> usize {
        self.interrupted_runs
    }

    /// Gives running runs the shutdown timeout to finish and cancels the rest (recorded
    /// cancelled, their snapshots removed), then stops accepting, lets answers in flight
    /// finish, and returns when all is closed.
    pub async fn shutdown(self) {
        self.executor.shutdown(self.shutdown_timeout).await;
        self.stopping.cancel();
        let _ = self.serving.await;
    }
}

async fn first_admin(catalog: &Catalog, configured: Option<&str>) -> Result<Option<FirstAdmin>, StartError> {
    if !catalog.users().await?.is_empty() {
        return Ok(None);
    }
    let generated = configured.is_none().then(random_password);
    let password = configured.or(generated.as_deref()).unwrap_or_default();
    catalog.create_user(FIRST_ADMIN, password, Role::Admin).await?;
    catalog.audit("server", "user.create", Some(FIRST_ADMIN), Some("first start")).await?;
    Ok(Some(FirstAdmin { user: FIRST_ADMIN.to_owned(), generated_password: generated }))
}

/// 20 letters and digits (~119 bits).
fn random_password() -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(20).map(char::from).collect()
}

fn tls_identity(config: &ServerConfig) -> Result<ServerIdentity, StartError> {
    let (cert, key, self_signed) = config.tls_paths()?;
    let loaded = if self_signed {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !config.listen.ip().is_unspecified() && !config.listen.ip().is_loopback() {
            names.push(config.listen.ip().to_string());
        }
        ServerIdentity::load_or_create(&cert, &key, names, "xenvault server")
    } else {
        ServerIdentity::load(&cert, &key)
    };
    loaded.map_err(|e| StartError::Tls(e.to_string()))
}
