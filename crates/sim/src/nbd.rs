//! The NBD server of each host: xenvault-nbd in xapi-compatible mode.

use crate::state::SharedSim;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

// TODO(nbd): serve with xenvault-nbd's XapiCompat server once it lands.
pub async fn serve(listener: TcpListener, _tls: Arc<rustls::ServerConfig>, _sim: SharedSim, mut stopped: watch::Receiver<bool>) {
    let _ = stopped.changed().await;
    drop(listener);
}
