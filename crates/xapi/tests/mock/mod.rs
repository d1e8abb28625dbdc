//! A tiny stand-in for xapi, enough to drive the client through the situations a real pool
//! produces (fallback to XML-RPC, expired sessions, tasks, redirects, the `HTTP/` body
//! quirk, TLS). Answers are encoded with xenvault-xapi-wire, which is tested against xapi's
//! own encoder separately.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use xenvault_xapi_wire::{Failure, Value, jsonrpc, xmlrpc};

pub const USER: &str = "root";
pub const PASSWORD: &str = "secret";
pub const DISK: &[u8] = b"0123456789abcdef-disk-content-0123456789abcdef";

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub status: &'static str,
    pub progress: f64,
    pub result: String,
    pub error: Vec<String>,
    /// Polls of `task.get_status` left before an async call completes.
    pub polls_left: u32,
    pub cancelled: bool,
}

#[derive(Default)]
pub struct Shared {
    pub sessions: Vec<String>,
    pub logins: u32,
    pub calls: Vec<String>,
    pub tasks: BTreeMap<String, Task>,
    pub destroyed_tasks: Vec<String>,
    pub next: u32,
    /// What the last import received: its headers and body.
    pub imported: Option<(HeaderMap, Bytes)>,
    /// Query of the last export request that reached the serving host.
    pub export_query: Option<HashMap<String, String>>,
    /// The export task ends in this failure instead of success.
    pub export_fails_with: Option<Vec<String>>,
    /// The export answers 200 and an HTTP error as its body.
    pub export_disguised_error: bool,
}

#[derive(Clone)]
pub struct Mock {
    pub shared: Arc<Mutex<Shared>>,
    pub jsonrpc: bool,
    /// Old xapi: `/jsonrpc` is answered as XML-RPC (text/xml) instead of 404.
    pub jsonrpc_answers_xml: bool,
    /// Transfers answer 302 to this base URL.
    pub redirect_to: Option<String>,
    /// A pool member: logins answer HOST_IS_SLAVE with this master address.
    pub master: Option<String>,
}

impl Mock {
    pub fn new(jsonrpc: bool) -> Self {
        Mock { shared: Arc::default(), jsonrpc, jsonrpc_answers_xml: false, redirect_to: None, master: None }
    }

    pub fn state(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", post(xml_rpc))
            .route("/jsonrpc", post(json_rpc))
            .route("/export_raw_vdi", get(export_raw_vdi))
            .route("/import_raw_vdi", put(import_raw_vdi))
            .with_state(self.clone())
    }

    /// Serves plain HTTP on a loopback port; returns the base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let router = self.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    /// Makes every current session invalid, as xapi does when a session times out.
    pub fn expire_sessions(&self) {
        self.state().sessions.clear();
    }

    fn dispatch(&self, method: &str, params: &[Value]) -> Result<Value, Failure> {
        let mut st = self.state();
        st.calls.push(method.to_owned());
        let text = |i: usize| params.get(i).and_then(Value::as_str).unwrap_or_default().to_owned();
        if method == "session.login_with_password" {
            if let Some(master) = &self.master {
                return Err(Failure::new("HOST_IS_SLAVE", vec![master.clone()]));
            }
            if text(0) != USER || text(1) != PASSWORD {
                return Err(Failure::new("SESSION_AUTHENTICATION_FAILED", vec![text(0)]));
            }
            st.next += 1;
            st.logins += 1;
            let session = format!("OpaqueRef:session-{}", st.next);
            st.sessions.push(session.clone());
            return Ok(Value::from(session));
        }
        let session = text(0);
        if !st.sessions.contains(&session) {
            return Err(Failure::new("SESSION_INVALID", vec![session]));
        }
        let task_ref = text(1);
        match method {
            "session.logout" => {
                st.sessions.retain(|s| *s != session);
                Ok(Value::from(""))
            }
            "VM.get_all_records" => {
                let mut vm = BTreeMap::new();
                vm.insert("name_label".to_owned(), Value::from("vm one"));
                vm.insert("memory_static_max".to_owned(), Value::Int(1 << 30));
                let mut all = BTreeMap::new();
                all.insert("OpaqueRef:vm-1".to_owned(), Value::Struct(vm));
                Ok(Value::Struct(all))
            }
            "VM.get_by_uuid" if text(1) == "00000000-0000-4000-8000-000000000001" => Ok(Value::from("OpaqueRef:vm-1")),
            "VM.get_by_uuid" => Err(Failure::new("UUID_INVALID", vec!["VM".into(), text(1)])),
            "task.create" => Ok(Value::from(new_task(&mut st, 0))),
            "Async.VM.snapshot" => Ok(Value::from(new_task(&mut st, 2))),
            "Async.VM.clean_shutdown" => Ok(Value::from(new_task(&mut st, u32::MAX))),
            "task.get_status" => {
                let task = task_mut(&mut st, &task_ref)?;
                if task.status == "pending" && task.polls_left != u32::MAX && task.polls_left > 0 {
                    task.polls_left -= 1;
                    task.progress += 0.25;
                    if task.polls_left == 0 {
                        task.status = "success";
                        task.result = "<value>OpaqueRef:snapshot-1</value>".into();
                    }
                }
                Ok(Value::from(task.status))
            }
            "task.get_progress" => Ok(Value::Double(task_mut(&mut st, &task_ref)?.progress)),
            "task.get_result" => Ok(Value::from(task_mut(&mut st, &task_ref)?.result.clone())),
            "task.get_error_info" => Ok(Value::from(task_mut(&mut st, &task_ref)?.error.clone())),
            "task.cancel" => {
                let task = task_mut(&mut st, &task_ref)?;
                task.cancelled = true;
                task.status = "cancelled";
                task.error = vec!["TASK_CANCELLED".into(), task_ref.clone()];
                Ok(Value::from(""))
            }
            "task.destroy" => {
                st.tasks.remove(&task_ref);
                st.destroyed_tasks.push(task_ref);
                Ok(Value::from(""))
            }
            _ => Err(Failure::new("MESSAGE_METHOD_UNKNOWN", vec![method.to_owned()])),
        }
    }
}

fn new_task(st: &mut Shared, polls: u32) -> String {
    st.next += 1;
    let reference = format!("OpaqueRef:task-{}", st.next);
    let task = Task {
        status: "pending",
        progress: 0.0,
        result: String::new(),
        error: vec![],
        polls_left: polls,
        cancelled: false,
    };
    st.tasks.insert(reference.clone(), task);
    reference
}

fn task_mut<'a>(st: &'a mut Shared, reference: &str) -> Result<&'a mut Task, Failure> {
    st.tasks.get_mut(reference).ok_or_else(|| Failure::new("HANDLE_INVALID", vec!["task".into(), reference.into()]))
}

async fn xml_rpc(State(mock): State<Mock>, body: Bytes) -> Response {
    match xmlrpc::decode_call(&body) {
        Ok((method, params)) => {
            let answer = xmlrpc::encode_response(&mock.dispatch(&method, &params));
            ([(header::CONTENT_TYPE, "text/xml")], answer).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn json_rpc(State(mock): State<Mock>, body: Bytes) -> Response {
    if mock.jsonrpc_answers_xml {
        // What XO's client expects from such hosts: 200, text/xml.
        let failure = Failure::new("INTERNAL_ERROR", vec!["not XML-RPC".into()]);
        let answer = xmlrpc::encode_response(&Err(failure));
        return ([(header::CONTENT_TYPE, "text/xml")], answer).into_response();
    }
    if !mock.jsonrpc {
        return StatusCode::NOT_FOUND.into_response();
    }
    match jsonrpc::decode_call(&body) {
        Ok(call) => {
            let result = mock.dispatch(&call.method, &call.params);
            let answer = jsonrpc::encode_response(call.version, &call.id, &result);
            ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Location of the same handler on the other host, without the query: the client must
/// carry session and task over.
fn redirect(base: &str, path: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, format!("{base}/{path}"))]).into_response()
}

fn checked_task(mock: &Mock, q: &HashMap<String, String>) -> Result<String, (StatusCode, &'static str)> {
    let st = mock.state();
    let session_ok = q.get("session_id").is_some_and(|s| st.sessions.contains(s));
    if !session_ok {
        return Err((StatusCode::FORBIDDEN, "bad session"));
    }
    match q.get("task_id") {
        Some(t) if st.tasks.contains_key(t) => Ok(t.clone()),
        _ => Err((StatusCode::BAD_REQUEST, "missing task_id")),
    }
}

async fn export_raw_vdi(State(mock): State<Mock>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(base) = &mock.redirect_to {
        return redirect(base, "export_raw_vdi");
    }
    let task = match checked_task(&mock, &q) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let mut st = mock.state();
    st.export_query = Some(q);
    let disguised = st.export_disguised_error;
    let failure = st.export_fails_with.clone();
    if let Some(t) = st.tasks.get_mut(&task) {
        match failure {
            Some(error) => {
                t.status = "failure";
                t.error = error;
            }
            None => t.status = "success",
        }
    }
    if disguised {
        let body = "HTTP/1.1 500 Internal Error\r\ncontent-length: 0\r\n\r\nVDI_IO_ERROR";
        return (StatusCode::OK, body).into_response();
    }
    (StatusCode::OK, DISK).into_response()
}

async fn import_raw_vdi(
    State(mock): State<Mock>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(base) = &mock.redirect_to {
        return redirect(base, "import_raw_vdi");
    }
    let task = match checked_task(&mock, &q) {
        Ok(t) => t,
        // The client's empty probe ends here, like on xapi.
        Err(r) => return r.into_response(),
    };
    let mut st = mock.state();
    if let Some(t) = st.tasks.get_mut(&task) {
        t.status = "success";
        t.result = "<value>OpaqueRef:vdi-new</value>".into();
    }
    st.imported = Some((headers, body));
    StatusCode::OK.into_response()
}
