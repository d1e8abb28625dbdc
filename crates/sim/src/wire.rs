//! The RPC endpoints' wire handling, through xenvault-xapi-wire: decode a call,
//! run it, encode the answer; bodies that do not parse get HTTP 500 like xapi.

use crate::error::ApiError;
use crate::methods;
use crate::state::SharedSim;
use xenvault_xapi_wire::{jsonrpc, xmlrpc, Failure, Value};

fn to_failure(e: ApiError) -> Failure {
    Failure::new(e.code, e.params)
}

/// `POST /`: an XML-RPC call; `None` when the body is not one (HTTP 500).
pub async fn xmlrpc_call(sim: &SharedSim, body: &[u8]) -> Option<String> {
    let (method, params) = xmlrpc::decode_call(body).ok()?;
    let result = methods::call(sim, &method, params).await.map_err(to_failure);
    Some(xmlrpc::encode_response(&result))
}

/// `POST /jsonrpc`: a JSON-RPC 1.0 or 2.0 call; `None` when malformed.
pub async fn jsonrpc_call(sim: &SharedSim, body: &[u8]) -> Option<Vec<u8>> {
    let call = jsonrpc::decode_call(body).ok()?;
    let result = methods::call(sim, &call.method, call.params).await.map_err(to_failure);
    Some(jsonrpc::encode_response(call.version, &call.id, &result))
}

/// A task result as xapi stores it: the XML-RPC `<value>` text of the result.
pub fn task_result_text(v: &Value) -> String {
    let mut out = String::new();
    xmlrpc::write_value(v, &mut out);
    out
}

