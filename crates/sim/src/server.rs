//! Starting and stopping a simulator: state dir, certificate, listeners, and the
//! HTTP(S) and NBD accept loops.

use crate::cbt::CbtLogs;
use crate::db::Db;
use crate::state::{Runtime, SharedSim, Sim, State};
use crate::storage::Storage;
use crate::{SimConfig, persist, seed, tls};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("state directory {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("certificate: {0}")]
    Certificate(std::io::Error),
    #[error("seeding the demo pool: {0}")]
    Seed(crate::ApiError),
}

/// A running simulator. Dropping it stops the listeners.
pub struct SimHandle {
    /// `https://127.0.0.1:PORT` (or `http://` with plain HTTP).
    pub url: String,
    pub addr: SocketAddr,
    /// The host certificate (PEM), also returned by `VDI.get_nbd_info`.
    pub cert_pem: String,
    pub user: String,
    pub password: String,
    pub nbd_port: u16,
    pub state_dir: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sim: SharedSim,
}

impl SimHandle {
    /// Stops accepting connections and waits for the listeners to close.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// The current fault settings (tests may adjust them directly).
    pub fn set_faults(&self, faults: crate::Faults) {
        self.sim.lock().faults = faults;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // The background saver is aborted below: what it had not saved yet is saved here.
        if let Err(e) = self.sim.flush() {
            tracing::error!("saving the simulator's state in {}: {e}", self.state_dir.display());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Simulator;

impl Simulator {
    /// Opens (or seeds) the pool in `config.state_dir` and starts serving.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let dir = config.state_dir.clone();
        let state_err = |source| SimError::State { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(state_err)?;
        let cert = tls::load_or_create(&dir).map_err(SimError::Certificate)?;
        let storage = Storage::open(&dir.join("disks")).map_err(state_err)?;
        let fresh = !persist::exists(&dir);
        let (db, cbt) = if fresh { (Db::new(), CbtLogs::default()) } else { persist::load(&dir).map_err(state_err)? };

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| SimError::Listen { addr: config.listen, source })?;
        // The second host listens on 127.0.0.2 when the first is on 127.0.0.1, so
        // transfers of its local disks can be redirected there as xapi does.
        let second = match addr.ip() {
            ip if ip == std::net::Ipv4Addr::LOCALHOST => {
                TcpListener::bind(SocketAddr::from(([127, 0, 0, 2], addr.port()))).await.ok()
            }
            _ => None,
        };
        let nbd_addr = SocketAddr::new(addr.ip(), config.nbd_port);
        let nbd_listener =
            TcpListener::bind(nbd_addr).await.map_err(|source| SimError::Listen { addr: nbd_addr, source })?;
        let nbd_port = nbd_listener.local_addr().map_err(|source| SimError::Listen { addr: nbd_addr, source })?.port();

        let runtime = Runtime {
            state_dir: dir.clone(),
            password: config.password.clone(),
            cert_pem: cert.cert_pem.clone(),
            cert_subject: tls::SUBJECT.to_owned(),
            nbd_port,
            plain_http: config.plain_http,
            quiesce_removed: config.quiesce_removed,
            guest_agent_delay: config.guest_agent_delay,
        };
        let mut state = State {
            db,
            storage,
            cbt,
            faults: config.faults.clone(),
            subscriptions: Default::default(),
            dirty: fresh,
            last_domid: 0,
        };
        state.last_domid = crate::boot::highest_domid(&state);
        let sim = Sim::new(state, runtime);
        if fresh {
            let host_ip = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
            let second_ip = if second.is_some() { "127.0.0.2".to_owned() } else { host_ip.clone() };
            let demo = config.demo_disks.clone();
            let seed_dir = dir.clone();
            let fleet = config.fleet_vms;
            sim.with(|st| seed::seed(st, [&host_ip, &second_ip], &demo, fleet, &seed_dir)).map_err(SimError::Seed)?;
        }

        let tls_config = cert.server_config().map_err(|e| SimError::Certificate(std::io::Error::other(e)))?;
        let (stop, stopped) = watch::channel(false);
        let acceptor = (!config.plain_http).then(|| tokio_rustls::TlsAcceptor::from(tls_config.clone()));
        let mut tasks = vec![tokio::spawn(serve_http(listener, acceptor.clone(), sim.clone(), stopped.clone()))];
        if let Some(second) = second {
            tasks.push(tokio::spawn(serve_http(second, acceptor, sim.clone(), stopped.clone())));
        }
        tasks.push(tokio::spawn(crate::state::save_in_background(sim.clone(), stopped.clone())));
        tasks.push(tokio::spawn(crate::nbd::serve(nbd_listener, tls_config, sim.clone(), stopped)));
        let scheme = if config.plain_http { "http" } else { "https" };
        Ok(SimHandle {
            url: format!("{scheme}://{addr}"),
            addr,
            cert_pem: cert.cert_pem,
            user: "root".to_owned(),
            password: config.password,
            nbd_port,
            state_dir: dir,
            stop,
            tasks,
            sim,
        })
    }
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sim: SharedSim,
    mut stopped: watch::Receiver<bool>,
) {
    let router = crate::http::router(sim);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
                    Err(e) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = result {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
}
