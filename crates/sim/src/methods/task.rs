//! Tasks: created by `Async.*` calls, HTTP handlers and `task.create`; polled with
//! the generic getters; finished with a result as XML-RPC text, like xapi.

use super::Args;
use crate::db::{new_ref, now_date};
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::state::{SharedSim, State};
use xenvault_xapi_wire::Value;

pub fn call(st: &mut State, name: &str, args: &Args) -> Option<ApiResult<Value>> {
    Some(match name {
        "create" => (|| {
            args.expect(3)?;
            let session = args.str(0)?.to_owned();
            let t = create(st, args.str(1)?, &session);
            st.db.set("task", &t, "name_description", Value::from(args.str(2)?))?;
            Ok(Value::from(t))
        })(),
        "cancel" => (|| {
            args.expect(2)?;
            let t = args.reference(st, 1, "task")?;
            if st.db.str_field("task", &t, "status")? != "pending" {
                return Err(ApiError::operation_not_allowed(format!("task {t} is not pending")));
            }
            st.db.set("task", &t, "status", Value::from("cancelling"))?;
            Ok(Value::from(""))
        })(),
        "destroy" => (|| {
            args.expect(2)?;
            let t = args.reference(st, 1, "task")?;
            st.db.remove(&t);
            Ok(Value::from(""))
        })(),
        _ => return None,
    })
}

pub fn create(st: &mut State, name: &str, session: &str) -> String {
    let master = super::session::master_host(st);
    let reference = new_ref();
    st.db.insert("task", reference.clone(), records::task(name, &master));
    let _ = st.db.add_to_set("session", session, "tasks", &reference);
    reference
}

/// Whether someone asked to cancel the task (long transfers check this).
pub fn is_cancelling(sim: &SharedSim, task: &str) -> bool {
    sim.lock().db.str_field("task", task, "status").is_ok_and(|s| s == "cancelling")
}

pub fn set_progress(sim: &SharedSim, task: &str, progress: f64) {
    let _ = sim.with(|st| {
        let _ = st.db.set("task", task, "progress", Value::Double(progress));
        Ok(())
    });
}

/// Finishes a task with the call's outcome (a destroyed task is left alone).
pub fn complete(sim: &SharedSim, task: &str, result: ApiResult<Value>) {
    let _ = sim.with(|st| {
        if !st.db.exists("task", task) {
            return Ok(());
        }
        let cancelled = st.db.str_field("task", task, "status")? == "cancelling";
        st.db.update("task", task, |r| {
            r.insert("finished".into(), now_date());
            r.insert("progress".into(), Value::Double(1.0));
            match (&result, cancelled) {
                (_, true) => {
                    r.insert("status".into(), Value::from("cancelled"));
                    r.insert("error_info".into(), Value::from(vec!["TASK_CANCELLED".to_owned(), task.to_owned()]));
                }
                (Ok(v), false) => {
                    r.insert("status".into(), Value::from("success"));
                    r.insert("result".into(), Value::from(crate::wire::task_result_text(v)));
                }
                (Err(e), false) => {
                    r.insert("status".into(), Value::from("failure"));
                    r.insert("error_info".into(), Value::from(e.all()));
                }
            }
            r.insert("allowed_operations".into(), Value::Array(Vec::new()));
        })
    });
}
