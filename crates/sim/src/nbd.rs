//! The NBD server of each host: xenvault-nbd in xapi's behaviour (fixed newstyle,
//! TLS required, EXPORT_NAME only, read-only), serving `/<vdi-uuid>?session_id=<ref>`
//! and checking the session at every connect, as xapi-nbd does.

use crate::faults::Transfer;
use crate::methods::{session, vdi};
use crate::state::SharedSim;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;
use xenvault_nbd::{Export, ExportResolver, Refusal, ServerConfig};

pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    sim: SharedSim,
    mut stopped: watch::Receiver<bool>,
) {
    let resolver = Arc::new(Resolver { sim });
    let shutdown = async move {
        let _ = stopped.changed().await;
    };
    if let Err(e) = xenvault_nbd::serve(listener, ServerConfig::xapi(Some(tls)), resolver, shutdown).await {
        tracing::warn!("NBD server stopped: {e}");
    }
}

struct Resolver {
    sim: SharedSim,
}

impl ExportResolver for Resolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Export>, Refusal>> {
        Box::pin(async move {
            let name = name.strip_prefix('/').unwrap_or(name);
            let (uuid, query) = name.split_once('?').unwrap_or((name, ""));
            let session_ref = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("session_id="))
                .ok_or_else(|| Refusal("no session_id in the export name".into()))?;
            if !session::is_valid(&self.sim, session_ref) {
                return Err(Refusal(format!("invalid session {session_ref}")));
            }
            let st = self.sim.lock();
            let refuse = |e: crate::ApiError| Refusal(e.to_string());
            let vdi_ref = st.db.by_uuid("VDI", uuid).map_err(refuse)?;
            if st.db.str_field("VDI", &vdi_ref, "type").map_err(refuse)? == "cbt_metadata" {
                return Err(Refusal(format!("VDI {uuid} holds no data (cbt_metadata)")));
            }
            let disk = vdi::disk_id(&st, &vdi_ref).map_err(refuse)?;
            let size = st.storage.size(&disk).map_err(|e| Refusal(e.to_string()))?;
            let export: Arc<dyn Export> =
                Arc::new(VdiExport { sim: self.sim.clone(), disk, size, sent: AtomicU64::new(0) });
            Ok(export)
        })
    }
}

/// One connection's view of a VDI, counting bytes for the cut fault.
struct VdiExport {
    sim: SharedSim,
    disk: String,
    size: u64,
    sent: AtomicU64,
}

impl Export for VdiExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Bytes>> {
        Box::pin(async move {
            let (cut, pause) = {
                let st = self.sim.lock();
                (st.faults.cut_after(Transfer::Nbd), st.faults.throttle(u64::from(len)))
            };
            let sent = self.sent.fetch_add(u64::from(len), Ordering::Relaxed) + u64::from(len);
            if cut.is_some_and(|limit| sent > limit) {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "transfer cut (fault injection)"));
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let mut buf = vec![0u8; len as usize];
            self.sim.lock().storage.read(&self.disk, offset, &mut buf)?;
            Ok(Bytes::from(buf))
        })
    }
}
