//! `session.*`: login as root with the configured password, logout, and the
//! session check every other call starts with.

use super::Args;
use crate::db::NULL_REF;
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::state::SharedSim;
use xenvault_xapi_wire::Value;

pub fn call(sim: &SharedSim, name: &str, args: &Args) -> Option<ApiResult<Value>> {
    Some(match name {
        "login_with_password" => login(sim, args),
        "logout" => logout(sim, args),
        _ => return None,
    })
}

fn login(sim: &SharedSim, args: &Args) -> ApiResult<Value> {
    // xapi takes (user, password) and later added optional version and originator.
    args.expect_one_of(&[2, 3, 4])?;
    let (user, password) = (args.str(0)?, args.str(1)?);
    let originator = if args.len() == 4 { args.str(3)? } else { "" };
    if user != "root" || password != sim.runtime.password {
        return Err(ApiError::new("SESSION_AUTHENTICATION_FAILED", [user, "Authentication failure"]));
    }
    sim.with(|st| {
        let master = master_host(st);
        let reference = crate::db::new_ref();
        st.db.insert("session", reference.clone(), records::session(&master, user, originator));
        Ok(Value::from(reference))
    })
}

fn logout(sim: &SharedSim, args: &Args) -> ApiResult<Value> {
    args.expect(1)?;
    let session = check(sim, args)?;
    sim.with(|st| {
        st.db.remove(&session);
        st.subscriptions.remove(&session);
        Ok(Value::from(""))
    })
}

/// The session of a call (its first parameter); `SESSION_INVALID` otherwise.
pub fn check(sim: &SharedSim, args: &Args) -> ApiResult<String> {
    let session = args.params.first().and_then(Value::as_str).unwrap_or(NULL_REF);
    if sim.lock().db.exists("session", session) {
        Ok(session.to_owned())
    } else {
        Err(ApiError::session_invalid(session))
    }
}

/// Whether a session ref is valid (HTTP handlers and NBD check this).
pub fn is_valid(sim: &SharedSim, session: &str) -> bool {
    sim.lock().db.exists("session", session)
}

pub fn master_host(st: &crate::state::State) -> String {
    st.db
        .all_of("pool")
        .first()
        .and_then(|p| st.db.str_field("pool", p, "master").ok())
        .unwrap_or_else(|| NULL_REF.to_owned())
}
