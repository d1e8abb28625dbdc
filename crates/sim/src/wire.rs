//! The RPC endpoints' wire handling, through xenvault-xapi-wire: decode a call,
//! run it, encode the answer; bodies that do not parse get HTTP 500 like xapi.

use crate::error::ApiError;
use crate::methods;
use crate::state::SharedSim;
use xenvault_xapi_wire::{Failure, Value, jsonrpc, xmlrpc};

fn to_failure(e: ApiError) -> Failure {
    Failure::new(e.code, e.params)
}

/// `POST /`: an XML-RPC call; `None` when the body is not one (HTTP 500).
pub async fn xmlrpc_call(sim: &SharedSim, body: &[u8]) -> Option<String> {
    let (method, params) = xmlrpc::decode_call(body).ok()?;
    let result = methods::call(sim, &method, params).await.map_err(to_failure);
    Some(match (method.as_str(), result) {
        // xapi answers this one call with the bare list, without the status struct.
        ("system.listMethods", Ok(names)) => {
            let mut xml = String::from("<?xml version=\"1.0\"?><methodResponse><params><param>");
            xmlrpc::write_value(&names, &mut xml);
            xml.push_str("</param></params></methodResponse>");
            xml
        }
        ("event.from", result) => ref_counts_as_i4(xmlrpc::encode_response(&result)),
        (_, result) => xmlrpc::encode_response(&result),
    })
}

/// xapi's `valid_ref_counts` are int32, which XML-RPC writes as `<i4>` (our `Value::Int`
/// is an int64, written as a bare string like xapi's int64s).
fn ref_counts_as_i4(xml: String) -> String {
    const START: &str = "<name>valid_ref_counts</name><value><struct>";
    let Some(begin) = xml.find(START).map(|i| i + START.len()) else { return xml };
    let Some(end) = xml[begin..].find("</struct>").map(|i| begin + i) else { return xml };
    let mut counts = String::new();
    for member in xml[begin..end].split_inclusive("</member>") {
        match member.strip_suffix("</value></member>").and_then(|m| m.rsplit_once("<value>")) {
            Some((head, n)) if n.parse::<i32>().is_ok() => {
                counts.push_str(&format!("{head}<value><i4>{n}</i4></value></member>"))
            }
            _ => counts.push_str(member),
        }
    }
    format!("{}{counts}{}", &xml[..begin], &xml[end..])
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
