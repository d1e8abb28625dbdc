//! The web UI: plain HTML, CSS and ES modules from `crates/server/web/`, compiled into the
//! binary (no build step, no files to install) and served at `/` (the page) and `/ui/...`
//! (its scripts and styles). Every answer carries a strict Content-Security-Policy (only
//! this origin's scripts, styles and API; no inline code, no frames) and an ETag derived
//! from the content, so browsers revalidate cheaply and never run a stale script after an
//! upgrade. docs/web-ui.md explains the choice.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Only this origin: the page's modules and stylesheet, the API (fetch and the SSE feed).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
}

macro_rules! asset {
    ($name:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("../web/", $name));
        Asset { name: $name, content_type: $content_type, body: BODY, etag: fnv1a(BODY) }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("format.js", JS),
    asset!("dom.js", JS),
    asset!("pages/login.js", JS),
    asset!("pages/dashboard.js", JS),
    asset!("pages/connections.js", JS),
    asset!("pages/jobs.js", JS),
    asset!("pages/runs.js", JS),
    asset!("pages/restore.js", JS),
    asset!("pages/settings.js", JS),
];

/// FNV-1a: a content fingerprint computed at compile time (an ETag, not a security check).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `/` and `/ui/{*file}`; no authentication (the page asks the API who is signed in).
pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/ui/{*file}", get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }))
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        let mut response = (StatusCode::NOT_FOUND, "no such file in the web UI").into_response();
        secure(response.headers_mut());
        return response;
    };
    let etag = format!("\"{:016x}\"", asset.etag);
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if unchanged { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    secure(headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidate every time: file names carry no version, and a 304 costs one round trip.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}
