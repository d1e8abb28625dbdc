//! A stored disk exported as a download: raw, dynamic VHD or qcow2, written while it is
//! sent (a few pieces in memory at most, whatever the disk's size). Raw has a known length;
//! the sparse formats depend on which blocks hold data, so they go chunked.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_restore::export::{DiskFormat, export};
use xenvault_types::progress::{Phase, Task};

use crate::AppState;
use crate::api::restore_points::{stored_disk, streamed};
use crate::auth::Principal;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Params;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_disk))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Raw,
    Vhd,
    Qcow2,
}

impl ExportFormat {
    fn disk_format(self) -> DiskFormat {
        match self {
            ExportFormat::Raw => DiskFormat::Raw,
            ExportFormat::Vhd => DiskFormat::Vhd,
            ExportFormat::Qcow2 => DiskFormat::Qcow2,
        }
    }

    /// The file name's extension and the answer's media type.
    fn file_type(self) -> (&'static str, &'static str) {
        match self {
            ExportFormat::Raw => ("raw", "application/octet-stream"),
            ExportFormat::Vhd => ("vhd", "application/x-vhd"),
            ExportFormat::Qcow2 => ("qcow2", "application/x-qemu-disk"),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// raw, vhd (dynamic) or qcow2.
    #[param(inline)]
    pub format: ExportFormat,
}

/// `vm-disk0-20261205T1310Z.vhd`: the VM, the disk and when the restore point was taken,
/// as characters every file system accepts.
fn export_file_name(vm: &str, position: u32, time: chrono::DateTime<chrono::Utc>, extension: &str) -> String {
    let vm: String = vm.chars().map(|c| if c.is_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    format!("{vm}-disk{position}-{}.{extension}", time.format("%Y%m%dT%H%MZ"))
}

/// Downloads a stored disk as an image (raw with its length; VHD and qcow2 chunked). A
/// failure part-way ends the body with an error, so a client never keeps a short image.
#[utoipa::path(get, path = "/api/repositories/{repo}/restore-points/{id}/disks/{position}/export", tag = "restore-points",
    params(("repo" = String, Path), ("id" = String, Path), ("position" = String, Path), ExportParams),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
        description = "the image; application/x-vhd or application/x-qemu-disk for vhd and qcow2"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn export_disk(
    State(state): State<AppState>,
    who: Principal,
    Path((repo, id, position)): Path<(String, String, String)>,
    Params(query): Params<ExportParams>,
) -> ApiResult<Response> {
    let (manifest, disk) = stored_disk(&state, &repo, &id, &position).await?;
    let stored = disk.reader().disk();
    let (extension, content_type) = query.format.file_type();
    let name = export_file_name(&manifest.source.name, stored.position, manifest.time, extension);
    let length = matches!(query.format, ExportFormat::Raw).then_some(stored.size);
    let target = format!("{repo}/{}/{position}", manifest.id);
    state.catalog.audit(&who.actor, "restore-point.export", Some(&target), Some(extension)).await?;
    // The download's end (the client gone, the server stopping) stops the work.
    let cancel: CancellationToken = state.stopping.child_token();
    let format = query.format.disk_format();
    Ok(streamed(content_type, &name, length, move |out| {
        export(&disk, format, out, &Task::hidden(Phase::Export), &cancel).map(drop).map_err(|e| e.to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn export_names_carry_the_vm_disk_and_time_in_safe_characters() {
        let time = chrono::Utc.with_ymd_and_hms(2026, 12, 5, 13, 10, 0).unwrap();
        assert_eq!(export_file_name("web 01/prod", 1, time, "vhd"), "web_01_prod-disk1-20261205T1310Z.vhd");
    }
}
