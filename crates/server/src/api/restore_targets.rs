//! What the restore forms choose between: where a restore can go in a pool (its SRs,
//! networks, VMs and VDIs) and where the stored VM's disks and network interfaces were (the
//! SRs and networks a mapping starts from).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_pool::inventory;
use xenvault_pool::records::{Vdi, all_records};
use xenvault_types::metadata::VmMetadata;

use crate::AppState;
use crate::api::connections::pool_login;
use crate::api::restore_points::{repository, restore_point};
use crate::error::{ApiError, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(pool_targets)).routes(routes!(stored_vm))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetSr {
    pub uuid: String,
    pub name: String,
    /// The SR type (ext, lvm, nfs, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes.
    pub size: u64,
    pub used: u64,
    pub shared: bool,
    /// The pool's default SR.
    pub default: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetNetwork {
    pub uuid: String,
    pub name: String,
    pub bridge: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetVm {
    pub uuid: String,
    pub name: String,
    pub power_state: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetVdi {
    pub uuid: String,
    pub name: String,
    /// Bytes (virtual size).
    pub size: u64,
}

/// A pool's places to restore to, each list sorted by name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolTargets {
    pub srs: Vec<TargetSr>,
    pub networks: Vec<TargetNetwork>,
    /// VMs (no templates, snapshots or control domains).
    pub vms: Vec<TargetVm>,
    /// Disks (no snapshots).
    pub vdis: Vec<TargetVdi>,
}

/// The SRs, networks, VMs and VDIs of a registered pool, read through its stored login.
#[utoipa::path(get, path = "/api/pools/{name}/targets", tag = "pools", params(("name" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = PoolTargets), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn pool_targets(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<PoolTargets>> {
    let login = pool_login(&state, &name).await?;
    let unreachable = |e: xenvault_pool::Error| {
        ApiError::new(StatusCode::BAD_GATEWAY, "pool_unreachable", format!("pool {name} ({}): {e}", login.entry.url))
    };
    let host = xenvault_pool::Host::connect(&login).await.map_err(unreachable)?;
    let client = host.client();
    let read = async {
        let srs = inventory::srs(client).await?;
        let networks = inventory::networks(client).await?;
        let vms = inventory::vms(client).await?;
        let vdis = host.call("VDI.get_all_records", vec![]).await?;
        let vdis: Vec<Vdi> = all_records(&vdis).into_iter().map(|(r, v)| Vdi::parse(&r, v)).collect();
        Ok::<_, xenvault_pool::Error>((srs, networks, vms, vdis))
    }
    .await;
    host.logout().await;
    let (srs, networks, vms, vdis) = read.map_err(unreachable)?;
    let mut vdis: Vec<TargetVdi> = vdis
        .into_iter()
        .filter(|vdi| !vdi.is_a_snapshot && !vdi.is_cbt_metadata())
        .map(|vdi| TargetVdi { uuid: vdi.uuid, name: vdi.name_label, size: vdi.virtual_size })
        .collect();
    vdis.sort_by(|a, b| (&a.name, &a.uuid).cmp(&(&b.name, &b.uuid)));
    Ok(Json(PoolTargets {
        srs: srs
            .into_iter()
            .map(|sr| TargetSr {
                uuid: sr.uuid,
                name: sr.name,
                kind: sr.kind,
                size: sr.size,
                used: sr.used,
                shared: sr.shared,
                default: sr.default,
            })
            .collect(),
        networks: networks
            .into_iter()
            .map(|n| TargetNetwork { uuid: n.uuid, name: n.name, bridge: n.bridge })
            .collect(),
        vms: vms.into_iter().map(|vm| TargetVm { uuid: vm.uuid, name: vm.name, power_state: vm.power_state }).collect(),
        vdis,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoredDiskPlace {
    /// The disk's position (what `disks/{position}` takes).
    pub position: u32,
    /// The VDI backed up.
    pub vdi_uuid: String,
    pub name: String,
    pub size: u64,
    /// The SR it was on: what `sr_map` maps from.
    pub sr_uuid: String,
    pub sr_name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoredVif {
    pub device: String,
    pub mac: String,
    /// The network it was on: what `network_map` maps from (by uuid or name).
    pub network_uuid: String,
    pub network_name: String,
}

/// The VM a restore point holds, as a restore places it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoredVm {
    pub uuid: String,
    pub name: String,
    pub disks: Vec<StoredDiskPlace>,
    pub vifs: Vec<StoredVif>,
}

/// The stored VM's disks with their SRs and its network interfaces with their networks;
/// 404 when the restore point holds no VM records.
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}/vm", tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path)),
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = StoredVm), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn stored_vm(
    State(state): State<AppState>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<Json<StoredVm>> {
    let m = restore_point(&repository(&state, &repo).await?, &id).await?;
    let meta = VmMetadata::from_value(&m.metadata)
        .map_err(|e| ApiError::internal(format!("restore point {}: {e}", m.id)))?
        .ok_or_else(|| ApiError::not_found(format!("restore point {} holds no VM records", m.id)))?;
    let disks = m
        .disks
        .iter()
        .map(|d| {
            let info = meta.disk(&d.uuid);
            StoredDiskPlace {
                position: d.position,
                vdi_uuid: d.uuid.clone(),
                name: info.map_or_else(|| d.name.clone(), |i| i.name_label.clone()),
                size: d.size,
                sr_uuid: info.map(|i| i.sr_uuid.clone()).unwrap_or_default(),
                sr_name: info.map(|i| i.sr_name.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let vifs = meta
        .vifs
        .iter()
        .map(|v| StoredVif {
            device: v.device.clone(),
            mac: v.mac.clone(),
            network_uuid: v.network_uuid.clone(),
            network_name: v.network_name.clone(),
        })
        .collect();
    Ok(Json(StoredVm { uuid: meta.vm.uuid.clone(), name: meta.vm.name_label.clone(), disks, vifs }))
}
