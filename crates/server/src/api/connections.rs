//! Pools and repositories the jobs use. Adding one checks it first (a pool login, a
//! repository opened with its passphrase); passwords and passphrases are sealed in the
//! catalog and never returned.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{Connection, ConnectionKind};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_repo::repository::Repository;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Body;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pools, add_pool))
        .routes(routes!(delete_pool))
        .routes(routes!(test_pool))
        .routes(routes!(list_repositories, add_repository))
        .routes(routes!(delete_repository))
        .routes(routes!(test_repository))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPool {
    pub name: String,
    /// The pool master, e.g. https://10.0.0.1
    pub url: String,
    #[serde(default = "root")]
    pub user: String,
    pub password: String,
    /// SHA-256 fingerprint of the master's certificate to pin (hex, colons allowed).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Accept any certificate (encrypted, not authenticated).
    #[serde(default)]
    pub insecure: bool,
}

fn root() -> String {
    "root".into()
}

/// A pool as listed: never its password.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    pub url: String,
    pub user: String,
    /// "verify" (system CAs), "fingerprint" or "insecure".
    pub tls: String,
    pub fingerprint: Option<String>,
    pub has_password: bool,
    pub updated_at: DateTime<Utc>,
}

impl From<Connection<PoolEntry>> for PoolView {
    fn from(c: Connection<PoolEntry>) -> Self {
        let (tls, fingerprint) = match c.settings.tls {
            ServerTrust::SystemRoots => ("verify", None),
            ref pinned @ ServerTrust::PinSha256(_) => ("fingerprint", pinned.pinned_sha256_hex()),
            ServerTrust::CaPem(_) | ServerTrust::PemPinOrCa(_) => ("ca", None),
            ServerTrust::Insecure => ("insecure", None),
        };
        PoolView {
            name: c.name,
            url: c.settings.url,
            user: c.settings.user,
            tls: tls.into(),
            fingerprint,
            has_password: c.has_secret,
            updated_at: c.updated_at,
        }
    }
}

/// What logging in to a pool found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolCheck {
    pub pool_name: String,
    pub pool_uuid: String,
    pub master: String,
    pub hosts: usize,
    pub vms: usize,
    pub api_version: String,
}

/// Logs in and describes the pool. An https master whose certificate this machine does
/// not trust (and no pin given) is a conflict naming the fingerprint it presented.
async fn check_pool(login: &PoolLogin) -> ApiResult<PoolCheck> {
    let failed = match xenvault_pool::Host::connect(login).await {
        Ok(host) => {
            let summary = host.describe().await.map_err(|e| ApiError::invalid(format!("describing the pool: {e}")));
            host.logout().await;
            let s = summary?;
            return Ok(PoolCheck {
                pool_name: s.pool_name,
                pool_uuid: s.pool_uuid,
                master: s.master,
                hosts: s.hosts,
                vms: s.vms,
                api_version: s.api_version,
            });
        }
        Err(e) => e,
    };
    if failed.is_auth() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "pool_login_refused",
            format!("the pool refused the login: {failed}"),
        ));
    }
    let url = url::Url::parse(&login.entry.url).ok().filter(|u| u.scheme() == "https");
    if let (ServerTrust::SystemRoots, Some(url)) = (&login.entry.tls, url) {
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let probe = move || xenvault_tls::server_fingerprint(&host, port, std::time::Duration::from_secs(15));
        if let Ok(Ok(seen)) = tokio::task::spawn_blocking(probe).await {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "untrusted_certificate",
                format!(
                    "the pool presents a certificate this server does not trust, SHA-256 fingerprint {seen}: compare it with the host's and add the pool again with \"fingerprint\""
                ),
            ));
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "pool_unreachable",
        format!("logging in to {}: {failed}", login.entry.url),
    ))
}

#[utoipa::path(get, path = "/api/pools", tag = "pools",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [PoolView]), (status = 401, body = ErrorBody)))]
async fn list_pools(State(state): State<AppState>) -> ApiResult<Json<Vec<PoolView>>> {
    let pools = state.catalog.connections::<PoolEntry>(ConnectionKind::Pool).await?;
    Ok(Json(pools.into_iter().map(PoolView::from).collect()))
}

/// Adds a pool after logging in to it.
#[utoipa::path(post, path = "/api/pools", tag = "pools", request_body = AddPool,
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 201, body = PoolView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn add_pool(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<AddPool>,
) -> ApiResult<(StatusCode, Json<PoolView>)> {
    let tls = match (&request.fingerprint, request.insecure) {
        (Some(_), true) => return Err(ApiError::invalid("give a fingerprint or insecure, not both")),
        (Some(pin), false) => ServerTrust::pin_sha256_hex(pin).map_err(|e| ApiError::invalid(e.to_string()))?,
        (None, true) => ServerTrust::Insecure,
        (None, false) => ServerTrust::SystemRoots,
    };
    if !matches!(url::Url::parse(&request.url).map(|u| u.scheme().to_owned()).as_deref(), Ok("https" | "http")) {
        return Err(ApiError::invalid(format!("url {:?}: give https://HOST (or http://HOST)", request.url)));
    }
    let entry = PoolEntry { url: request.url, user: request.user, tls };
    let login = PoolLogin { name: request.name.clone(), entry: entry.clone(), password: request.password.clone() };
    check_pool(&login).await?;
    state.catalog.add_connection(ConnectionKind::Pool, &request.name, &entry, Some(&request.password)).await?;
    state.catalog.audit(&who.actor, "pool.add", Some(&request.name), Some(&entry.url)).await?;
    let added = state.catalog.connection::<PoolEntry>(ConnectionKind::Pool, &request.name).await?;
    Ok((StatusCode::CREATED, Json(added.into())))
}

#[utoipa::path(delete, path = "/api/pools/{name}", tag = "pools", params(("name" = String, Path)),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_pool(State(state): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.catalog.delete_connection(ConnectionKind::Pool, &name).await?;
    state.catalog.audit(&who.actor, "pool.delete", Some(&name), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The stored login of a pool.
pub async fn pool_login(state: &AppState, name: &str) -> ApiResult<PoolLogin> {
    let pool = state.catalog.connection::<PoolEntry>(ConnectionKind::Pool, name).await?;
    let password = state.catalog.connection_secret(ConnectionKind::Pool, name).await?.unwrap_or_default();
    Ok(PoolLogin { name: pool.name, entry: pool.settings, password })
}

/// Logs in to a stored pool and describes it.
#[utoipa::path(post, path = "/api/pools/{name}/test", tag = "pools", params(("name" = String, Path)),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, body = PoolCheck), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn test_pool(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<PoolCheck>> {
    Ok(Json(check_pool(&pool_login(&state, &name).await?).await?))
}

pub use xenvault_node::connect::RepositorySettings;

/// Unknown fields are refused by the flattened settings.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddRepository {
    pub name: String,
    #[serde(flatten)]
    pub settings: RepositorySettings,
    pub passphrase: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepositoryView {
    pub name: String,
    pub settings: RepositorySettings,
    pub has_passphrase: bool,
    pub updated_at: DateTime<Utc>,
}

/// What a repository holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepositoryCheck {
    pub restore_points: usize,
    /// Disk bytes the restore points describe.
    pub logical_bytes: u64,
    /// Bytes storing them took.
    pub stored_bytes: u64,
    /// logical / stored.
    pub dedup_ratio: f64,
}

/// Opens a repository with its passphrase (its immutable objects cached in the server's
/// cache directory); failing to is a `repository_unusable` answer.
pub async fn open_repository(
    state: &AppState,
    settings: &RepositorySettings,
    passphrase: &str,
) -> ApiResult<Repository> {
    let secret = xenvault_repo::keys::Secret::passphrase(passphrase);
    Repository::open(&settings.location, &settings.backend(&state.dirs.cache), Some(&secret)).await.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "repository_unusable", format!("opening {}: {e}", settings.location))
    })
}

/// A registered repository and its passphrase.
pub async fn stored_repository(state: &AppState, name: &str) -> ApiResult<(Connection<RepositorySettings>, String)> {
    let kind = ConnectionKind::Repository;
    let repo = state.catalog.connection::<RepositorySettings>(kind, name).await?;
    let passphrase = state.catalog.connection_secret(kind, name).await?.unwrap_or_default();
    Ok((repo, passphrase))
}

async fn check_repository(
    state: &AppState,
    settings: &RepositorySettings,
    passphrase: &str,
) -> ApiResult<RepositoryCheck> {
    let repo = open_repository(state, settings, passphrase).await?;
    let points = repo.restore_points().await.map_err(|e| ApiError::internal(format!("listing restore points: {e}")))?;
    let stats = xenvault_repo::stats::stats(&points);
    Ok(RepositoryCheck {
        restore_points: stats.restore_points,
        logical_bytes: stats.logical_bytes,
        stored_bytes: stats.stored_bytes,
        dedup_ratio: stats.dedup_ratio,
    })
}

#[utoipa::path(get, path = "/api/repositories", tag = "repositories",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = [RepositoryView]), (status = 401, body = ErrorBody)))]
async fn list_repositories(State(state): State<AppState>) -> ApiResult<Json<Vec<RepositoryView>>> {
    let repos = state.catalog.connections::<RepositorySettings>(ConnectionKind::Repository).await?;
    let views = repos
        .into_iter()
        .map(|c| RepositoryView {
            name: c.name,
            settings: c.settings,
            has_passphrase: c.has_secret,
            updated_at: c.updated_at,
        })
        .collect();
    Ok(Json(views))
}

/// Adds an existing (initialised) repository after opening it with the passphrase.
#[utoipa::path(post, path = "/api/repositories", tag = "repositories", request_body = AddRepository,
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 201, body = RepositoryCheck), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_repository(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<AddRepository>,
) -> ApiResult<(StatusCode, Json<RepositoryCheck>)> {
    let check = check_repository(&state, &request.settings, &request.passphrase).await?;
    let kind = ConnectionKind::Repository;
    state.catalog.add_connection(kind, &request.name, &request.settings, Some(&request.passphrase)).await?;
    state.catalog.audit(&who.actor, "repository.add", Some(&request.name), Some(&request.settings.location)).await?;
    Ok((StatusCode::CREATED, Json(check)))
}

#[utoipa::path(delete, path = "/api/repositories/{name}", tag = "repositories", params(("name" = String, Path)),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_repository(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.catalog.delete_connection(ConnectionKind::Repository, &name).await?;
    state.catalog.audit(&who.actor, "repository.delete", Some(&name), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Opens a stored repository: its restore points, size and dedup ratio.
#[utoipa::path(post, path = "/api/repositories/{name}/test", tag = "repositories", params(("name" = String, Path)),
    security(("token" = ["operator"]), ("session" = ["operator"])),
    responses((status = 200, body = RepositoryCheck), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn test_repository(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<RepositoryCheck>> {
    let (repo, passphrase) = stored_repository(&state, &name).await?;
    Ok(Json(check_repository(&state, &repo.settings, &passphrase).await?))
}
