//! Instant access: a restore point's disk served read-only over NBD by the server, for as
//! long as an operator keeps it. Each one listens on its own port of the configured address
//! (loopback unless `instant_access_address` says otherwise) under a random export name,
//! which is the only name it answers to and is never listed, optionally behind TLS with a
//! fresh self-signed certificate. They end when stopped or when the server stops.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_nbd::{Export, ExportResolver, Refusal};
use xenvault_restore::nbd::{DiskExport, listener_names};
use xenvault_tls::ServerIdentity;

use crate::AppState;
use crate::api::restore_points::stored_disk;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Body;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_instant_access, start_instant_access)).routes(routes!(stop_instant_access))
}

/// The disks this server serves over NBD, and the address it serves them on.
pub struct InstantAccess {
    address: IpAddr,
    serving: Mutex<BTreeMap<String, (InstantAccessView, CancellationToken)>>,
}

impl InstantAccess {
    pub fn new(address: IpAddr) -> Self {
        InstantAccess { address, serving: Mutex::new(BTreeMap::new()) }
    }

    fn serving(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (InstantAccessView, CancellationToken)>> {
        self.serving.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartInstantAccess {
    pub repository: String,
    /// Its id, or an unambiguous prefix of at least 4 characters.
    pub restore_point: String,
    /// The disk's position (0, 1, ...).
    pub disk: u32,
    /// Require TLS (a fresh self-signed certificate, its fingerprint and PEM in the answer).
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstantAccessView {
    pub id: String,
    pub repository: String,
    pub restore_point: String,
    pub vm_name: String,
    pub disk: u32,
    /// Bytes of the disk.
    pub size: u64,
    /// The address and port it listens on.
    pub address: String,
    /// The only export name it answers to (random: whoever knows it can read the disk).
    pub export: String,
    /// `nbd://host:port/export`, or `nbds://...` with TLS.
    pub url: String,
    pub tls: bool,
    /// SHA-256 of the TLS certificate.
    pub fingerprint: Option<String>,
    /// The TLS certificate (PEM), for clients to trust.
    pub certificate_pem: Option<String>,
    /// Command lines that read it: qemu-img and nbdcopy.
    pub commands: Vec<String>,
    pub started_by: String,
    pub started_at: DateTime<Utc>,
}

/// Answers only to its own export name; lists nothing.
struct NamedExport {
    name: String,
    export: Arc<DiskExport>,
}

impl ExportResolver for NamedExport {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Export>, Refusal>> {
        let found: Result<Arc<dyn Export>, Refusal> =
            if name == self.name { Ok(self.export.clone()) } else { Err(Refusal("no such export".into())) };
        Box::pin(async move { found })
    }
}

/// 128 random bits as hex.
fn random_hex() -> String {
    use rand::Rng;
    hex_encode(&rand::thread_rng().r#gen::<[u8; 16]>())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How to read the export with common clients (the TLS ones need the certificate saved
/// as ca-cert.pem in a folder, as GnuTLS clients expect).
fn client_commands(addr: SocketAddr, export: &str, tls: bool) -> Vec<String> {
    let (host, port) = (addr.ip(), addr.port());
    if tls {
        vec![
            format!(
                "qemu-img convert --object tls-creds-x509,id=t0,endpoint=client,dir=PKI --image-opts \
                 driver=nbd,server.type=inet,server.host={host},server.port={port},export={export},tls-creds=t0 \
                 -O qcow2 disk.qcow2"
            ),
            format!("nbdcopy 'nbds://{addr}/{export}?tls-certificates=PKI' disk.raw"),
        ]
    } else {
        vec![
            format!("qemu-img convert -f raw nbd://{addr}/{export} -O qcow2 disk.qcow2"),
            format!("nbdcopy nbd://{addr}/{export} disk.raw"),
        ]
    }
}

/// Starts serving a stored disk over NBD (read-only).
#[utoipa::path(post, path = "/api/instant-access", tag = "restore-points", request_body = StartInstantAccess,
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 201, body = InstantAccessView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn start_instant_access(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<StartInstantAccess>,
) -> ApiResult<(StatusCode, Json<InstantAccessView>)> {
    let position = request.disk.to_string();
    let (manifest, disk) = stored_disk(&state, &request.repository, &request.restore_point, &position).await?;
    let listener = tokio::net::TcpListener::bind((state.instant.address, 0))
        .await
        .map_err(|e| ApiError::internal(format!("listening on {}: {e}", state.instant.address)))?;
    let addr = listener.local_addr().map_err(|e| ApiError::internal(format!("the NBD listener's address: {e}")))?;
    let identity = if request.tls {
        let names = listener_names(&addr.to_string(), addr);
        Some(
            ServerIdentity::self_signed(names, "xenvault instant access")
                .map_err(|e| ApiError::internal(format!("making the NBD certificate: {e}")))?,
        )
    } else {
        None
    };
    let tls = identity
        .as_ref()
        .map(ServerIdentity::server_config)
        .transpose()
        .map_err(|e| ApiError::internal(format!("setting up NBD TLS: {e}")))?;
    let fingerprint = identity
        .as_ref()
        .map(ServerIdentity::fingerprint)
        .transpose()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let export = random_hex();
    let view = InstantAccessView {
        id: random_hex()[..16].to_owned(),
        repository: request.repository.clone(),
        restore_point: manifest.id.clone(),
        vm_name: manifest.source.name.clone(),
        disk: request.disk,
        size: disk.reader().size(),
        address: addr.to_string(),
        url: format!("{}://{addr}/{export}", if request.tls { "nbds" } else { "nbd" }),
        commands: client_commands(addr, &export, request.tls),
        export: export.clone(),
        tls: request.tls,
        fingerprint,
        certificate_pem: identity.map(|id| id.cert_pem),
        started_by: who.actor.clone(),
        started_at: Utc::now(),
    };
    let detail =
        format!("disk {} of restore point {} from {} on {addr}", request.disk, manifest.id, request.repository);
    state.catalog.audit(&who.actor, "instant-access.start", Some(&view.id), Some(&detail)).await?;
    let stop = state.stopping.child_token();
    state.instant.serving().insert(view.id.clone(), (view.clone(), stop.clone()));
    let resolver =
        Arc::new(NamedExport { name: export, export: Arc::new(DiskExport::read_only(disk.reader().clone())) });
    let (instant, id) = (state.instant.clone(), view.id.clone());
    tokio::spawn(async move {
        let config = xenvault_nbd::ServerConfig::modern(tls);
        if let Err(e) = xenvault_nbd::serve(listener, config, resolver, stop.cancelled_owned()).await {
            tracing::warn!(instant_access = %id, "NBD serving ended: {e}");
        }
        instant.serving().remove(&id);
    });
    Ok((StatusCode::CREATED, Json(view)))
}

/// The disks served over NBD now.
#[utoipa::path(get, path = "/api/instant-access", tag = "restore-points",
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, body = [InstantAccessView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_instant_access(State(state): State<AppState>) -> Json<Vec<InstantAccessView>> {
    Json(state.instant.serving().values().map(|(view, _)| view.clone()).collect())
}

/// Stops serving: open connections finish their current requests and are closed.
#[utoipa::path(delete, path = "/api/instant-access/{id}", tag = "restore-points", params(("id" = String, Path)),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn stop_instant_access(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let Some((_, stop)) = state.instant.serving().remove(&id) else {
        return Err(ApiError::not_found(format!("no instant access {id}")));
    };
    stop.cancel();
    state.catalog.audit(&who.actor, "instant-access.stop", Some(&id), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_name_the_address_and_export_and_names_are_random() {
        let commands = client_commands("127.0.0.1:4000".parse().unwrap(), "abc", false);
        assert_eq!(commands[1], "nbdcopy nbd://127.0.0.1:4000/abc disk.raw");
        assert_ne!(random_hex(), random_hex());
        assert_eq!(random_hex().len(), 32);
    }
}
