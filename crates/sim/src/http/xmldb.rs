//! `/pool/xmldbdump`: GET dumps the pool database, PUT restores one, as xapi's
//! `Pool_db_backup` handlers do (what `xe pool-dump-database` and
//! `xe pool-restore-database [dry-run=true]` call).
//!
//! The PUT needs a Content-Length (400 without, after the credentials check), answers
//! 200 before it reads the body, and reports the outcome on its task only: a dump of
//! another schema version fails with `RESTORE_INCOMPATIBLE_VERSION`, one whose master
//! has a physical interface this host lacks with `RESTORE_TARGET_MISSING_DEVICE`.
//! `dry_run=true` stops there. Otherwise xapi writes the prepared database aside and
//! restarts on it after a fuse (`db_restore_fuse_time`, 30 s); the simulator swaps its
//! database in after [`RESTORE_FUSE`], and like a restarted xapi forgets every session
//! and task then.

use super::raw::{BodyReader, content_length};
use super::{Params, begin, export_headers, fail, stream_body};
use crate::db_restore;
use crate::methods::task;
use crate::state::SharedSim;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::io::Read;
use std::time::Duration;
use xenvault_xapi_wire::Value;

/// How long after a restore the simulator "restarts" on the restored database: shorter
/// than xapi's 30 s so tests do not idle, long enough for a client to read its task.
pub const RESTORE_FUSE: Duration = Duration::from_secs(2);

/// Pieces the dump is streamed in, so that the cut and bandwidth faults apply within it.
const DUMP_PIECE: usize = 64 << 10;

/// `GET /pool/xmldbdump`: the database as XML (xapi's `<database>` layout: one
/// `<table>` per class, one `<row>` per object, fields as attributes), streamed without a
/// length like xapi's, under the cut and bandwidth faults of every HTTP transfer.
pub async fn dump(State(sim): State<SharedSim>, Query(q): Query<Params>) -> Response {
    let task_ref = match begin(&sim, &q, "pool.dump_database") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let xml = {
        let st = sim.lock();
        crate::dump::database_xml(&st.db)
    };
    let mut headers = export_headers(&task_ref, "text/xml", "xmldbdump.xml");
    headers.remove("content-disposition");
    let task = task_ref.clone();
    let body = stream_body(&sim, task_ref, move |out| {
        for piece in xml.as_bytes().chunks(DUMP_PIECE) {
            if !out.send(piece.to_vec()) {
                return Err(crate::ApiError::new("TASK_CANCELLED", [task.as_str()]));
            }
        }
        Ok(())
    });
    (headers, body).into_response()
}

/// `PUT /pool/xmldbdump[?dry_run=true]`: checks and (unless a dry run) restores a dump.
pub async fn restore(
    State(sim): State<SharedSim>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let task_ref = match begin(&sim, &q, "pool.restore_database") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(length) = content_length(&headers) else {
        let response = StatusCode::BAD_REQUEST.into_response();
        task::complete(&sim, &task_ref, Err(crate::ApiError::internal("the database upload needs a Content-Length")));
        return response;
    };
    let dry_run = q.get("dry_run").is_some_and(|v| v == "true");
    let cut = sim.lock().faults.cut_http_after;
    let mut reader = BodyReader::new(body, cut).take(length);
    let received = tokio::task::spawn_blocking(move || {
        let mut xml = Vec::new();
        reader.read_to_end(&mut xml).map(|_| xml)
    })
    .await;
    let xml = match received {
        Ok(Ok(xml)) => xml,
        Ok(Err(e)) => return fail(&sim, &task_ref, crate::ApiError::internal(format!("database upload: {e}"))),
        Err(e) => return fail(&sim, &task_ref, crate::ApiError::internal(e)),
    };
    let prepared = db_restore::parse(&xml).and_then(|mut restored| {
        let st = sim.lock();
        let localhost = crate::methods::session::master_host(&st);
        restored.prepare(&st.db, &localhost)?;
        Ok(restored)
    });
    let restored = match prepared {
        Ok(r) => r,
        Err(e) => {
            // xapi has sent its 200 already: the failure is the task's.
            task::complete(&sim, &task_ref, Err(e));
            return ok(&task_ref);
        }
    };
    task::complete(&sim, &task_ref, Ok(Value::from("")));
    if !dry_run {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESTORE_FUSE).await;
            let swapped = sim.with(|st| {
                st.db = restored.into_db(st.db.last_event_id() + 1);
                st.subscriptions.clear();
                Ok(())
            });
            if let Err(e) = swapped {
                tracing::error!("restarting on the restored database: {e}");
            }
        });
    }
    ok(&task_ref)
}

fn ok(task_ref: &str) -> Response {
    let mut headers = export_headers(task_ref, "text/plain", "");
    headers.remove("content-disposition");
    headers.remove("content-type");
    (StatusCode::OK, headers).into_response()
}
