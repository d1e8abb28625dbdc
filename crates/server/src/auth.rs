//! Who is calling, and whether they may. Every API route goes through [`authorize`]: an
//! API token (`Authorization: Bearer xvt_...`) or a web session cookie (then a request that
//! changes something must echo the session's CSRF token in `X-CSRF-Token`). The role a
//! route needs is read from its OpenAPI security requirement (the scopes name the role), so
//! the published document and the enforcement cannot drift apart; a route the document
//! does not list needs admin.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use xenvault_catalog::Role;

use crate::AppState;
use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "xenvault_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Names of the two security schemes in the OpenAPI document.
pub const TOKEN_SCHEME: &str = "token";
pub const SESSION_SCHEME: &str = "session";

/// The authenticated caller, put into the request by [`authorize`].
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user, or `token NAME (PREFIX…)`: what the audit log records.
    pub actor: String,
    /// The user name behind a session; a token's creator.
    pub user: String,
    pub role: Role,
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| ApiError::unauthorized("not authenticated"))
    }
}

/// What each route needs: `None` for the public ones (login), else the least role.
#[derive(Debug, Default)]
pub struct RouteRoles(HashMap<(Method, String), Option<Role>>);

impl RouteRoles {
    /// Reads the roles from the document's security requirements.
    pub fn from_openapi(doc: &OpenApi) -> Self {
        let mut roles = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                roles.insert((method, path.clone()), required_role(operation));
            }
        }
        RouteRoles(roles)
    }

    fn needed(&self, method: &Method, path: &str) -> Option<Role> {
        // HEAD is answered by the GET handler.
        let method = if method == Method::HEAD { Method::GET } else { method.clone() };
        self.0.get(&(method, path.to_owned())).copied().unwrap_or(Some(Role::Admin))
    }
}

/// The role named by an operation's security scopes; none for an operation without security.
pub fn required_role(operation: &utoipa::openapi::path::Operation) -> Option<Role> {
    let requirements = operation.security.as_ref()?;
    let value = serde_json::to_value(requirements).ok()?;
    let scopes = value.as_array()?.iter().filter_map(|r| r.as_object()).flat_map(|r| r.values());
    let names = scopes.filter_map(|s| s.as_array()).flatten().filter_map(|s| s.as_str());
    // The weakest role named by any accepted scheme; a requirement with no role: admin.
    names.filter_map(|n| serde_json::from_value(n.into()).ok()).min().or(Some(Role::Admin))
}

/// Adds the two security schemes to the document.
pub struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API token (xvt_...); scopes name the least role the operation needs."))
            .build();
        components.add_security_scheme(TOKEN_SCHEME, SecurityScheme::Http(bearer));
        let cookie =
            utoipa::openapi::security::ApiKey::Cookie(utoipa::openapi::security::ApiKeyValue::with_description(
                SESSION_COOKIE,
                "The web session (POST /api/auth/login); requests that change something also send X-CSRF-Token.",
            ));
        components.add_security_scheme(SESSION_SCHEME, SecurityScheme::ApiKey(cookie));
    }
}

/// Middleware on every API route: authenticates, checks CSRF for sessions, checks the role.
pub async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let Some(path) = path else { return next.run(request).await };
    let Some(needed) = state.roles.needed(request.method(), &path) else { return next.run(request).await };
    let principal = match authenticate(&state, request.method(), request.headers()).await {
        Ok(principal) => principal,
        Err(e) => return e.into_response(),
    };
    if !principal.role.includes(needed) {
        let message = format!("{} may not do this: it needs the {} role", principal.actor, role_name(needed));
        return ApiError::forbidden(message).into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

pub fn role_name(role: Role) -> String {
    serde_json::to_value(role).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

async fn authenticate(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<Principal, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer TOKEN'"))?;
        let token = state.catalog.authenticate_token(secret.trim()).await?;
        let token = token.ok_or_else(|| ApiError::unauthorized("unknown, revoked or expired API token"))?;
        return Ok(Principal {
            actor: format!("token {} ({}…)", token.name, token.prefix),
            user: token.created_by,
            role: token.role,
        });
    }
    let Some(session_id) = cookie(headers, SESSION_COOKIE) else {
        return Err(ApiError::unauthorized("no credentials: send 'Authorization: Bearer TOKEN' or log in"));
    };
    let session = state.catalog.session(&session_id).await?;
    let session = session.ok_or_else(|| ApiError::unauthorized("the session expired or was closed: log in again"))?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let echoed = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !safe && echoed != Some(session.csrf_token.as_str()) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "csrf",
            "a session request that changes something must send the session's CSRF token in X-CSRF-Token",
        ));
    }
    Ok(Principal { actor: session.user.clone(), user: session.user, role: session.role })
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The session cookie: HttpOnly (no script reads it), Secure (HTTPS only), SameSite=Strict
/// (not sent on requests other sites start).
pub fn session_cookie(id: &str, max_age_secs: i64) -> HeaderValue {
    let text = format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("xenvault_session=; Max-Age=0"))
}
