//! Errors: why the server could not start, and what an API call answers when it fails
//! (`{"code": "...", "message": "..."}` with a stable code clients may match on).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("TLS identity: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Catalog(#[from] xenvault_catalog::Error),
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable: unauthorized, forbidden, csrf, not_found, invalid, conflict, internal.
    pub code: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody { code: self.code.to_owned(), message: self.message };
        let mut response = (self.status, Json(body)).into_response();
        if unauthorized {
            // Tells clients which scheme to use (RFC 9110 requires it on a 401).
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<xenvault_catalog::Error> for ApiError {
    fn from(e: xenvault_catalog::Error) -> Self {
        use xenvault_catalog::Error as E;
        match e {
            E::NotFound { .. } => ApiError::not_found(e.to_string()),
            E::Conflict(_) => ApiError::conflict(e.to_string()),
            E::Invalid(_) => ApiError::invalid(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
