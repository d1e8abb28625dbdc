//! `GET /export` and `PUT /import`: VMs as XVA.

use super::Params;
use crate::state::SharedSim;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

// TODO(xva): waiting for xenvault-xva's writer/reader.
pub async fn export(State(_sim): State<SharedSim>, Query(_q): Query<Params>) -> Response {
    StatusCode::NOT_IMPLEMENTED.into_response()
}

pub async fn import(State(_sim): State<SharedSim>, Query(_q): Query<Params>, _body: Body) -> Response {
    StatusCode::NOT_IMPLEMENTED.into_response()
}
