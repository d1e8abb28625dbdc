//! Access: web login and logout, the caller's identity, API tokens, users, the audit log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xenvault_catalog::{ApiToken, AuditEntry, AuditQuery, NewApiToken, Role, User};

use crate::AppState;
use crate::auth::{Principal, SESSION_COOKIE, cookie, session_cookie};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Params};

/// How long a web session lasts.
const SESSION_HOURS: i64 = 12;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(audit_log))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub user: String,
    pub role: Role,
    /// Send it back in `X-CSRF-Token` with every request that changes something.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// Logs a user in: sets the session cookie (HttpOnly, Secure, SameSite=Strict).
#[utoipa::path(post, path = "/api/auth/login", tag = "access", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
async fn login(State(state): State<AppState>, Body(request): Body<LoginRequest>) -> ApiResult<Response> {
    let Some(user) = state.catalog.check_password(&request.user, &request.password).await? else {
        state.catalog.audit(&request.user, "login.failed", None, None).await?;
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    let created = state.catalog.create_session(&user.name, Duration::hours(SESSION_HOURS)).await?;
    state.catalog.audit(&user.name, "login", None, None).await?;
    let session = created.session;
    let body = LoginResponse {
        user: session.user,
        role: session.role,
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    };
    let cookie = session_cookie(&created.id, SESSION_HOURS * 3600);
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// Ends the web session and clears its cookie.
#[utoipa::path(post, path = "/api/auth/logout", tag = "access",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.catalog.delete_session(&id).await?;
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, session_cookie("", 0))]).into_response())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The name the audit log records.
    pub actor: String,
    pub user: String,
    pub role: Role,
}

/// Who the credentials belong to, and their role.
#[utoipa::path(get, path = "/api/auth/me", tag = "access",
    security(("token" = ["read-only"]), ("session" = ["read-only"])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(who: Principal) -> Json<Me> {
    Json(Me { actor: who.actor, user: who.user, role: who.role })
}

/// API tokens (never the tokens themselves).
#[utoipa::path(get, path = "/api/tokens", tag = "access",
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 200, body = [ApiToken]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tokens(State(state): State<AppState>) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(state.catalog.tokens().await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    /// The token stops working after this many days (never when unset).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 36500)]
    pub expires_in_days: Option<u32>,
}

/// Creates an API token; its secret is in this answer only.
#[utoipa::path(post, path = "/api/tokens", tag = "access", request_body = CreateToken,
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 201, body = NewApiToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<CreateToken>,
) -> ApiResult<(StatusCode, Json<NewApiToken>)> {
    let expires_at = match request.expires_in_days {
        Some(days @ 1..=36500) => Some(Utc::now() + Duration::days(days.into())),
        Some(days) => return Err(ApiError::invalid(format!("expires_in_days {days}: give 1 to 36500"))),
        None => None,
    };
    let created = state.catalog.create_token(&request.name, request.role, &who.user, expires_at).await?;
    state.catalog.audit(&who.actor, "token.create", Some(&created.token.id), Some(&created.token.name)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revokes an API token.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "access", params(("id" = String, Path)),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_token(State(state): State<AppState>, who: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.catalog.delete_token(&id).await?;
    state.catalog.audit(&who.actor, "token.delete", Some(&id), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users of the web interface.
#[utoipa::path(get, path = "/api/users", tag = "access",
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 200, body = [User]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(state.catalog.users().await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    /// At least 8 characters; stored as an argon2id hash.
    pub password: String,
    pub role: Role,
}

#[utoipa::path(post, path = "/api/users", tag = "access", request_body = CreateUser,
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let user = state.catalog.create_user(&request.name, &request.password, request.role).await?;
    state.catalog.audit(&who.actor, "user.create", Some(&user.name), None).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(delete, path = "/api/users/{name}", tag = "access", params(("name" = String, Path)),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_user(State(state): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if name == who.user {
        return Err(ApiError::conflict("you cannot delete yourself"));
    }
    state.catalog.delete_user(&name).await?;
    state.catalog.audit(&who.actor, "user.delete", Some(&name), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Who did what, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "access", params(AuditParams),
    security(("token" = ["admin"]), ("session" = ["admin"])),
    responses((status = 200, body = [AuditEntry]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_log(
    State(state): State<AppState>,
    Params(params): Params<AuditParams>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let query = AuditQuery {
        actor: params.actor,
        action: params.action,
        since: params.since,
        before_id: params.before_id,
        limit: params.limit,
    };
    Ok(Json(state.catalog.audit_log(&query).await?))
}
