//! The HTTP side of a host: RPC endpoints and the transfer handlers
//! (`/export_raw_vdi`, `/import_raw_vdi`, `/export`, `/import`, `/pool/xmldbdump`),
//! each authenticated by `session_id` and tracked by a task, as xapi does.

mod raw;
mod xmldb;
mod xva;

use crate::error::ApiError;
use crate::faults::Transfer;
use crate::methods::{session, task};
use crate::state::SharedSim;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::collections::HashMap;
use tokio::sync::mpsc;
use xenvault_xapi_wire::Value;

pub type Params = HashMap<String, String>;

/// Largest RPC body accepted (a `sim.write` carries base64 data).
const RPC_BODY_LIMIT: usize = 512 << 20;

/// xapi picks a handler by method and the longest prefix of the path, so `/export/`,
/// `/export_raw_vdi/x` and `POST /xmlrpc` (Xen Orchestra's XML-RPC fallback) all work;
/// a path no handler claims gets 403. Each prefix here is served with and without a
/// trailing part.
pub fn router(sim: SharedSim) -> Router {
    let prefixed = |router: Router<SharedSim>, prefix: &str, route: axum::routing::MethodRouter<SharedSim>| {
        // Other methods on these paths fall back to what `/` answers, as in xapi.
        let route = route.fallback(fallback);
        router
            .route(prefix, route.clone())
            .route(&format!("{prefix}/"), route.clone())
            .route(&format!("{prefix}/{{*rest}}"), route)
    };
    let mut router = Router::new();
    for (prefix, route) in [
        ("/jsonrpc", post(jsonrpc)),
        ("/export_raw_vdi", get(raw::export)),
        ("/import_raw_vdi", put(raw::import)),
        ("/export", get(xva::export)),
        ("/import", put(xva::import)),
        ("/pool/xmldbdump", get(xmldb::dump).put(xmldb::restore)),
    ] {
        router = prefixed(router, prefix, route);
    }
    router.fallback(fallback).layer(DefaultBodyLimit::max(RPC_BODY_LIMIT)).with_state(sim)
}

/// What xapi's `/` prefix answers: XML-RPC for any POST (`/`, `/RPC2`, `/json`,
/// `/xmlrpc`...), the CORS preflight for OPTIONS, 403 for anything else.
async fn fallback(
    State(sim): State<SharedSim>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match method {
        axum::http::Method::POST => xmlrpc(State(sim), body).await,
        axum::http::Method::OPTIONS => {
            let asked = headers.get("access-control-request-headers").and_then(|v| v.to_str().ok());
            let allow = asked.map_or("X-Requested-With".to_owned(), |h| format!("{h}, X-Requested-With"));
            let mut h = cors_headers();
            if let Ok(v) = HeaderValue::from_str(&allow) {
                h.insert("access-control-allow-headers", v);
            }
            h.insert("access-control-allow-methods", HeaderValue::from_static("PUT"));
            (StatusCode::OK, h).into_response()
        }
        _ => (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>HTTP 403 forbidden</h1>Access to the requested resource is forbidden.</body></html>",
        )
            .into_response(),
    }
}

/// The headers xapi puts on every RPC answer.
fn cors_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert("access-control-allow-headers", HeaderValue::from_static("X-Requested-With"));
    h
}

async fn xmlrpc(State(sim): State<SharedSim>, body: Bytes) -> Response {
    match crate::wire::xmlrpc_call(&sim, &body).await {
        Some(xml) => (cors_headers(), [(header::CONTENT_TYPE, "text/xml")], xml).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn jsonrpc(State(sim): State<SharedSim>, body: Bytes) -> Response {
    match crate::wire::jsonrpc_call(&sim, &body).await {
        Some(json) => (cors_headers(), [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Checks `session_id` (401 like xapi without valid credentials) and returns the
/// task to report on: `task_id` if given, else a new one.
pub fn begin(sim: &SharedSim, q: &Params, name: &str) -> Result<String, Box<Response>> {
    let session = q.get("session_id").map(String::as_str).unwrap_or_default();
    if !session::is_valid(sim, session) {
        return Err(Box::new(StatusCode::UNAUTHORIZED.into_response()));
    }
    if let Some(t) = q.get("task_id")
        && sim.lock().db.exists("task", t)
    {
        return Ok(t.clone());
    }
    sim.with(|st| Ok(task::create(st, name, session))).map_err(|e| Box::new(error_response(&e)))
}

/// The 302 for a transfer of `vdi=` that another host must serve (after the
/// credentials check, as in xapi).
pub fn maybe_redirect(sim: &SharedSim, q: &Params, headers: &HeaderMap, uri: &axum::http::Uri) -> Option<Response> {
    let session = q.get("session_id")?;
    if !session::is_valid(sim, session) {
        return None;
    }
    let vdi = vdi_param(sim, q, "vdi").ok()?;
    redirect_for(sim, &vdi, headers, uri)
}

/// xapi answers 302 when the disk's SR is not attached to the host asked: the
/// transfer goes to a host that has it. `None`: this host serves it.
fn redirect_for(sim: &SharedSim, vdi: &str, headers: &HeaderMap, uri: &axum::http::Uri) -> Option<Response> {
    let host_header = headers.get(header::HOST)?.to_str().ok()?;
    let (asked_ip, port) = host_header.rsplit_once(':').unwrap_or((host_header, ""));
    let st = sim.lock();
    let sr = st.db.str_field("VDI", vdi, "SR").ok()?;
    let addresses: Vec<String> = st
        .db
        .find("PBD", "SR", &sr)
        .iter()
        .filter(|pbd| st.db.bool_field("PBD", pbd, "currently_attached").unwrap_or(false))
        .filter_map(|pbd| st.db.str_field("PBD", pbd, "host").ok())
        .filter_map(|host| st.db.str_field("host", &host, "address").ok())
        .collect();
    if addresses.iter().any(|a| a == asked_ip) {
        return None;
    }
    let target = addresses.first()?;
    let scheme = uri.scheme_str().unwrap_or(if sim.runtime.plain_http { "http" } else { "https" });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{scheme}://{target}:{port}{path}");
    Some((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// A handler failure before any body was sent: HTTP 500 with the error text.
pub fn error_response(e: &ApiError) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// Fails the task and answers 500.
pub fn fail(sim: &SharedSim, task_ref: &str, e: ApiError) -> Response {
    let response = error_response(&e);
    task::complete(sim, task_ref, Err(e));
    response
}

/// Looks up a `vdi=` parameter given as ref or uuid.
pub fn vdi_param(sim: &SharedSim, q: &Params, key: &str) -> Result<String, ApiError> {
    let v = q.get(key).ok_or_else(|| ApiError::internal(format!("Missing {key} query parameter")))?;
    let st = sim.lock();
    if st.db.exists("VDI", v) {
        return Ok(v.clone());
    }
    st.db.by_uuid("VDI", v)
}

/// Headers of a streamed export: 200, task-id, type, attachment name, no length,
/// connection closed afterwards (xapi's `http_200_ok ~keep_alive:false`).
pub fn export_headers(task_ref: &str, content_type: &str, filename: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put("task-id", task_ref.to_owned());
    put("content-type", content_type.to_owned());
    put("content-disposition", format!("attachment; filename=\"{filename}\""));
    put("connection", "close".to_owned());
    h
}

/// The sending half of a streamed body, applying the cut and bandwidth faults.
pub struct BodySender {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    sim: SharedSim,
    sent: u64,
}

impl BodySender {
    /// Sends a chunk; `false` once the client is gone or the transfer is cut.
    pub fn send(&mut self, data: Vec<u8>) -> bool {
        let (cut, pause) = {
            let st = self.sim.lock();
            (st.faults.cut_after(Transfer::Http), st.faults.throttle(data.len() as u64))
        };
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
        let mut data = data;
        if let Some(limit) = cut
            && self.sent + data.len() as u64 >= limit
        {
            data.truncate(limit.saturating_sub(self.sent) as usize);
            let _ = self.tx.blocking_send(Ok(Bytes::from(data)));
            let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "transfer cut (fault injection)");
            let _ = self.tx.blocking_send(Err(cut));
            return false;
        }
        self.sent += data.len() as u64;
        self.tx.blocking_send(Ok(Bytes::from(data))).is_ok()
    }

    /// Ends the body with an error (the connection drops mid-stream).
    pub fn abort(&self, why: String) {
        let _ = self.tx.blocking_send(Err(std::io::Error::other(why)));
    }
}

/// A streamed body produced by `produce` on a blocking thread; the task completes
/// with its result.
pub fn stream_body(
    sim: &SharedSim,
    task_ref: String,
    produce: impl FnOnce(&mut BodySender) -> Result<(), ApiError> + Send + 'static,
) -> Body {
    let (tx, rx) = mpsc::channel(4);
    let mut sender = BodySender { tx, sim: sim.clone(), sent: 0 };
    let sim = sim.clone();
    tokio::task::spawn_blocking(move || {
        let result = produce(&mut sender);
        if let Err(e) = &result {
            sender.abort(e.to_string());
        }
        task::complete(&sim, &task_ref, result.map(|()| Value::from("")));
    });
    Body::from_stream(tokio_stream_of(rx))
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
