//! XenAPI call dispatch: arity and session checks, `Async.*` tasks, the generic
//! per-class accessors, and the class-specific calls in submodules.

pub mod devices;
pub mod event;
mod generic;
pub mod session;
mod sim;
pub mod task;
pub mod vdi;
pub mod vm;

use crate::db::{Record, canonical_class};
use crate::error::{ApiError, ApiResult};
use crate::state::{SharedSim, State};
use std::collections::BTreeMap;
use xenvault_xapi_wire::Value;

/// The positional parameters of one call, with typed accessors that fail the way
/// xapi does on a bad argument.
pub struct Args<'a> {
    pub method: &'a str,
    pub params: &'a [Value],
}

impl<'a> Args<'a> {
    /// Checks the count (the session included), like xapi before anything else.
    pub fn expect(&self, n: usize) -> ApiResult<()> {
        self.expect_one_of(&[n])
    }

    /// Calls with optional trailing parameters (xapi fills in defaults). Like xapi,
    /// a mismatch reports counts without the session: the parameters without
    /// default values, and what was received.
    pub fn expect_one_of(&self, counts: &[usize]) -> ApiResult<()> {
        if counts.contains(&self.params.len()) {
            return Ok(());
        }
        let session = usize::from(!self.method.starts_with("session.login"));
        let expected = counts.iter().copied().min().unwrap_or_default().saturating_sub(session);
        Err(ApiError::parameter_count(self.method, expected, self.params.len().saturating_sub(session)))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn value(&self, i: usize) -> ApiResult<&'a Value> {
        self.params.get(i).ok_or_else(|| ApiError::parameter_count(self.method, i + 1, self.params.len()))
    }

    pub fn str(&self, i: usize) -> ApiResult<&'a str> {
        self.value(i)?.as_str().ok_or_else(|| ApiError::field_type(&format!("parameter {i}")))
    }

    pub fn int(&self, i: usize) -> ApiResult<i64> {
        self.value(i)?.as_i64().ok_or_else(|| ApiError::field_type(&format!("parameter {i}")))
    }

    pub fn map(&self, i: usize) -> ApiResult<&'a BTreeMap<String, Value>> {
        self.value(i)?.as_struct().ok_or_else(|| ApiError::field_type(&format!("parameter {i}")))
    }

    /// A ref parameter that must name a live object of `class`.
    pub fn reference(&self, st: &State, i: usize, class: &str) -> ApiResult<String> {
        let r = self.str(i)?;
        st.db.get(class, r)?;
        Ok(r.to_owned())
    }

    /// A ref that may also be `OpaqueRef:NULL` (returned as `None`).
    pub fn optional_reference(&self, st: &State, i: usize, class: &str) -> ApiResult<Option<String>> {
        match self.str(i)? {
            crate::db::NULL_REF | "" => Ok(None),
            _ => self.reference(st, i, class).map(Some),
        }
    }
}

/// Answers one XenAPI call (any transport).
pub async fn call(sim: &SharedSim, method: &str, params: Vec<Value>) -> ApiResult<Value> {
    let latency = sim.lock().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    if let Some(inner) = method.strip_prefix("Async.") {
        return start_async(sim, inner, params);
    }
    dispatch(sim, method, params).await
}

/// The names `system.listMethods` reports: like xapi, the synchronous names of the
/// datamodel's calls (no `Async.` ones); here only those the simulator answers.
pub fn list_methods() -> Vec<String> {
    let served = |class: &str| class == "event" || crate::db::CLASSES.contains(&class);
    crate::datamodel::messages()
        .filter(|(class, name)| served(class) && known(class, name))
        .map(|(class, name)| format!("{class}.{name}"))
        .collect()
}

/// The class-specific calls (the generic accessors come from the records).
const SPECIFIC: &[(&str, &[&str])] = &[
    ("system", &["listMethods"]),
    ("session", &["login_with_password", "logout", "get_all_subject_identifiers"]),
    ("event", &["from", "inject", "register", "unregister", "next", "get_current_id"]),
    (
        "VM",
        &[
            "snapshot",
            "snapshot_with_quiesce",
            "clone",
            "copy",
            "destroy",
            "create",
            "start",
            "start_on",
            "shutdown",
            "clean_shutdown",
            "hard_shutdown",
            "suspend",
            "resume",
            "pause",
            "unpause",
            "clean_reboot",
            "hard_reboot",
            "provision",
            "revert",
        ],
    ),
    (
        "VDI",
        &[
            "create",
            "destroy",
            "clone",
            "snapshot",
            "copy",
            "resize",
            "enable_cbt",
            "disable_cbt",
            "list_changed_blocks",
            "data_destroy",
            "get_nbd_info",
            "forget",
        ],
    ),
    ("VBD", &["create", "destroy", "plug", "unplug", "unplug_force"]),
    ("VIF", &["create", "destroy", "plug", "unplug"]),
    ("network", &["create", "destroy"]),
    ("task", &["create", "cancel", "destroy", "set_status", "set_progress", "set_result", "set_error_info"]),
    (
        "sim",
        &[
            "write",
            "scribble",
            "sha256",
            "inject_fault",
            "clear_faults",
            "set_cut",
            "set_latency",
            "set_bandwidth",
            "crash_on_boot",
        ],
    ),
];

/// The simulator's own calls, and the generic ones xapi has for that class.
fn known(class: &str, name: &str) -> bool {
    SPECIFIC.iter().any(|(c, calls)| *c == class && calls.contains(&name))
        || (generic::handles(class, name) && crate::datamodel::has_message(class, name))
}

async fn dispatch(sim: &SharedSim, method: &str, params: Vec<Value>) -> ApiResult<Value> {
    let (class_name, name) = method.split_once('.').ok_or_else(|| ApiError::method_unknown(method))?;
    let args = Args { method, params: &params };
    match class_name {
        "system" if name == "listMethods" => {
            return Ok(Value::from(list_methods()));
        }
        "session" => {
            if let Some(result) = session::call(sim, name, &args) {
                return result;
            }
        }
        "sim" => {
            session::check(sim, &args)?;
            return sim::call(sim, name, &args).await;
        }
        // `event` has calls but no objects, so it is not in the class list.
        "event" => {
            session::check(sim, &args)?;
            return event::call(sim, name, &args).await;
        }
        _ => {}
    }
    let class = canonical_class(class_name).ok_or_else(|| ApiError::method_unknown(method))?;
    if !known(class, name) {
        return Err(ApiError::method_unknown(method));
    }
    session::check(sim, &args)?;
    if let Some(error) = sim.lock().faults.take_call_fault(&format!("{class}.{name}")) {
        return Err(error);
    }
    match class {
        "VDI" if name == "data_destroy" => vdi::data_destroy(sim, &args).await,
        "VM" if crate::boot::BOOTS.contains(&name) => crate::boot::start(sim, name, &args).await,
        _ => sim.with(|st| {
            let specific = match class {
                "VM" => vm::call(st, name, &args, &sim.runtime),
                "VDI" => vdi::call(st, name, &args, &sim.runtime),
                "VBD" | "VIF" | "network" => devices::call(st, class, name, &args),
                "task" => task::call(st, name, &args),
                _ => None,
            };
            specific.unwrap_or_else(|| generic::call(st, class, name, &args))
        }),
    }
}

/// `Async.Class.method`: a task runs the call; its ref returns at once.
fn start_async(sim: &SharedSim, method: &str, params: Vec<Value>) -> ApiResult<Value> {
    let args = Args { method, params: &params };
    let session = session::check(sim, &args)?;
    let known_method =
        method.split_once('.').and_then(|(c, n)| canonical_class(c).map(|c| known(c, n))).unwrap_or(false);
    if !known_method {
        return Err(ApiError::method_unknown(&format!("Async.{method}")));
    }
    let task = sim.with(|st| Ok(task::create(st, &format!("Async.{method}"), &session)))?;
    let sim2 = sim.clone();
    let (method, task2) = (method.to_owned(), task.clone());
    tokio::spawn(async move {
        let result = Box::pin(dispatch(&sim2, &method, params)).await;
        task::complete(&sim2, &task2, result);
    });
    Ok(Value::from(task))
}

/// Record values of refs (for `get_all_records`-style answers).
pub fn records_of(st: &State, class: &str, refs: &[String]) -> Value {
    let map: BTreeMap<String, Value> = refs
        .iter()
        .filter_map(|r| st.db.get(class, r).ok().map(|rec| (r.clone(), Value::Struct(rec.clone()))))
        .collect();
    Value::Struct(map)
}

/// A clone of a record with fields replaced.
pub fn with_fields(mut rec: Record, fields: impl IntoIterator<Item = (&'static str, Value)>) -> Record {
    for (k, v) in fields {
        rec.insert(k.to_owned(), v);
    }
    rec
}
