//! JSON-RPC as xapi speaks it at `POST /jsonrpc`. Version 1.0 answers
//! `{"result", "error": [CODE, params...] | null, "id"}`; version 2.0 answers
//! `{"jsonrpc": "2.0", "result" | "error": {"code": 1, "message": CODE, "data": [params]}, "id"}`
//! (xapi's error code is always 1: some clients treat 0 as success). Ints are numbers,
//! dates are strings, and members are written in xapi's order.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::{Failure, MAX_DEPTH, Value, WireError};

/// xapi's JSON-RPC 2.0 `error.code`.
pub const ERROR_CODE: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRpcVersion {
    V1,
    V2,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonCall {
    pub method: String,
    pub params: Vec<Value>,
    /// Echoed back in the answer; a number or a string (xapi refuses a null id).
    pub id: Json,
    pub version: JsonRpcVersion,
}

/// A request body.
pub fn encode_call(method: &str, params: &[Value], id: u64, version: JsonRpcVersion) -> Vec<u8> {
    let params = Json::Array(params.iter().map(to_json).collect()).to_string();
    let mut fields = Vec::with_capacity(4);
    if version == JsonRpcVersion::V2 {
        fields.push(("jsonrpc", json_text("2.0")));
    }
    fields.push(("method", json_text(method)));
    fields.push(("params", params));
    fields.push(("id", id.to_string()));
    ordered_object(&fields).into_bytes()
}

/// Reads a request.
pub fn decode_call(body: &[u8]) -> Result<JsonCall, WireError> {
    let Json::Object(obj) = parse(body)? else {
        return Err(WireError::malformed("request is not a JSON object"));
    };
    let method = match obj.get("method") {
        Some(Json::String(m)) => m.clone(),
        _ => return Err(WireError::malformed("request has no string \"method\"")),
    };
    let version = match obj.get("jsonrpc") {
        None => JsonRpcVersion::V1,
        Some(Json::String(v)) if v == "2.0" => JsonRpcVersion::V2,
        Some(Json::String(v)) if v == "1.0" => JsonRpcVersion::V1,
        Some(other) => {
            return Err(WireError::malformed(format!("unknown jsonrpc version {other}")));
        }
    };
    let params = match obj.get("params") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) => items.iter().map(|p| from_json_at(p, 0)).collect::<Result<_, _>>()?,
        // JSON-RPC 2.0 allows named parameters; xapi passes the object as one argument.
        Some(obj @ Json::Object(_)) if version == JsonRpcVersion::V2 => vec![from_json_at(obj, 0)?],
        Some(_) => return Err(WireError::malformed("\"params\" is not an array")),
    };
    let id = match obj.get("id") {
        Some(id @ (Json::Number(_) | Json::String(_))) => id.clone(),
        _ => return Err(WireError::malformed("\"id\" must be a number or a string")),
    };
    Ok(JsonCall { method, params, id, version })
}

/// An answer in the shape of the call's version.
pub fn encode_response(version: JsonRpcVersion, id: &Json, result: &Result<Value, Failure>) -> Vec<u8> {
    let id = id.to_string();
    let null = || "null".to_owned();
    let fields = match (version, result) {
        (JsonRpcVersion::V1, Ok(v)) => vec![("result", to_json(v).to_string()), ("error", null()), ("id", id)],
        (JsonRpcVersion::V1, Err(f)) => {
            let description = Json::Array(f.to_description().iter().map(to_json).collect());
            vec![("result", null()), ("error", description.to_string()), ("id", id)]
        }
        (JsonRpcVersion::V2, Ok(v)) => {
            vec![("jsonrpc", json_text("2.0")), ("result", to_json(v).to_string()), ("id", id)]
        }
        (JsonRpcVersion::V2, Err(f)) => {
            let error = ordered_object(&[
                ("code", ERROR_CODE.to_string()),
                ("message", json_text(&f.code)),
                ("data", Json::from(f.params.clone()).to_string()),
            ]);
            vec![("jsonrpc", json_text("2.0")), ("error", error), ("id", id)]
        }
    };
    ordered_object(&fields).into_bytes()
}

/// Reads an answer of either version.
pub fn decode_response(body: &[u8]) -> Result<Result<Value, Failure>, WireError> {
    let Json::Object(obj) = parse(body)? else {
        return Err(WireError::malformed("response is not a JSON object"));
    };
    match obj.get("error") {
        None | Some(Json::Null) => {}
        Some(Json::Array(items)) => {
            let items = items.iter().map(|i| from_json_at(i, 0)).collect::<Result<Vec<_>, _>>()?;
            return Failure::from_description(&items)
                .map(Err)
                .ok_or_else(|| WireError::malformed("empty or non-text \"error\" array"));
        }
        Some(Json::Object(err)) => {
            let code = match err.get("message") {
                Some(Json::String(m)) => m.clone(),
                _ => return Err(WireError::malformed("\"error\" has no string \"message\"")),
            };
            let params = match err.get("data") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Array(items)) => items
                    .iter()
                    .map(|i| from_json_at(i, 0).map(|v| v.to_text().unwrap_or_default()))
                    .collect::<Result<_, _>>()?,
                // A lone parameter, as xapi's SDK test fixtures show it.
                Some(other) => vec![from_json_at(other, 0)?.to_text().unwrap_or_else(|| other.to_string())],
            };
            return Ok(Err(Failure { code, params }));
        }
        Some(other) => {
            return Err(WireError::malformed(format!("unexpected \"error\": {other}")));
        }
    }
    match obj.get("result") {
        Some(v) => Ok(Ok(from_json_at(v, 0)?)),
        None => Err(WireError::malformed("response has neither \"result\" nor \"error\"")),
    }
}

/// A value as JSON: ints as numbers, dates as strings. Non-finite doubles, which JSON
/// cannot carry, become null.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Str(s) | Value::DateTime(s) => Json::String(s.clone()),
        Value::Int(i) => Json::from(*i),
        Value::Bool(b) => Json::Bool(*b),
        Value::Double(d) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Struct(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// A JSON value as a XenAPI value. `null` becomes `""`, XenAPI's void.
pub fn from_json(j: &Json) -> Result<Value, WireError> {
    from_json_at(j, 0)
}

fn from_json_at(j: &Json, depth: usize) -> Result<Value, WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::TooDeep(MAX_DEPTH));
    }
    Ok(match j {
        Json::Null => Value::Str(String::new()),
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => {
                return Err(WireError::malformed(format!("integer {u} exceeds int64")));
            }
            (None, None, Some(d)) => Value::Double(d),
            (None, None, None) => return Err(WireError::malformed(format!("bad number {n}"))),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(|i| from_json_at(i, depth + 1)).collect::<Result<_, _>>()?),
        Json::Object(m) => Value::Struct(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), from_json_at(v, depth + 1)?)))
                .collect::<Result<BTreeMap<_, _>, WireError>>()?,
        ),
    })
}

fn parse(body: &[u8]) -> Result<Json, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))
}

fn json_text(s: &str) -> String {
    Json::from(s).to_string()
}

/// Writes an object from members already serialised, in the given order (xapi's order;
/// serde_json's map would sort them).
fn ordered_object(fields: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(64);
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_text(key));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap_or_default()
    }

    #[test]
    fn golden_responses() {
        let id = Json::from(3);
        let ok = Ok(Value::Int(10_737_418_240));
        let fail = Err(Failure::new("HANDLE_INVALID", vec!["VDI".into(), "OpaqueRef:x".into()]));
        assert_eq!(
            text(encode_response(JsonRpcVersion::V1, &id, &ok)),
            r#"{"result":10737418240,"error":null,"id":3}"#
        );
        assert_eq!(
            text(encode_response(JsonRpcVersion::V1, &id, &fail)),
            r#"{"result":null,"error":["HANDLE_INVALID","VDI","OpaqueRef:x"],"id":3}"#
        );
        assert_eq!(
            text(encode_response(JsonRpcVersion::V2, &id, &ok)),
            r#"{"jsonrpc":"2.0","result":10737418240,"id":3}"#
        );
        assert_eq!(
            text(encode_response(JsonRpcVersion::V2, &Json::from("a"), &fail)),
            r#"{"jsonrpc":"2.0","error":{"code":1,"message":"HANDLE_INVALID","data":["VDI","OpaqueRef:x"]},"id":"a"}"#
        );
    }

    #[test]
    fn golden_calls() {
        let params = [Value::from("root"), Value::from("pw")];
        assert_eq!(
            text(encode_call("session.login_with_password", &params, 1, JsonRpcVersion::V2)),
            r#"{"jsonrpc":"2.0","method":"session.login_with_password","params":["root","pw"],"id":1}"#
        );
        assert_eq!(text(encode_call("x", &[], 9, JsonRpcVersion::V1)), r#"{"method":"x","params":[],"id":9}"#);
    }

    #[test]
    fn round_trips_both_versions() {
        let mut m = BTreeMap::new();
        m.insert("size".to_owned(), Value::Int(-5));
        m.insert("when".to_owned(), Value::DateTime("20260101T00:00:00Z".into()));
        m.insert("ok".to_owned(), Value::Bool(true));
        m.insert("ratio".to_owned(), Value::Double(0.25));
        m.insert("list".to_owned(), Value::Array(vec![Value::from("a")]));
        let v = Value::Struct(m);
        for version in [JsonRpcVersion::V1, JsonRpcVersion::V2] {
            let call = decode_call(&encode_call("VM.x", std::slice::from_ref(&v), 7, version)).expect("call");
            assert_eq!(call.method, "VM.x");
            assert_eq!(call.version, version);
            assert_eq!(call.id, Json::from(7));
            let mut want = v.clone();
            if let Value::Struct(m) = &mut want {
                // JSON has no date type: dates come back as strings.
                m.insert("when".into(), Value::from("20260101T00:00:00Z"));
            }
            assert_eq!(call.params, vec![want.clone()]);

            let ok = encode_response(version, &call.id, &Ok(v.clone()));
            assert_eq!(decode_response(&ok), Ok(Ok(want)));
            let f = Failure::new("SESSION_INVALID", vec!["OpaqueRef:s".into()]);
            let err = encode_response(version, &call.id, &Err(f.clone()));
            assert_eq!(decode_response(&err), Ok(Err(f)));
        }
    }

    #[test]
    fn v2_error_with_a_lone_parameter() {
        let body = br#"{"jsonrpc":"2.0","error":{"code":1,"message":"HANDLE_INVALID","data":"OpaqueRef:x"},"id":1}"#;
        let want = Failure::new("HANDLE_INVALID", vec!["OpaqueRef:x".into()]);
        assert_eq!(decode_response(body), Ok(Err(want)));
    }

    #[test]
    fn v2_error_without_data() {
        let body = br#"{"jsonrpc":"2.0","error":{"code":1,"message":"SESSION_INVALID"},"id":1}"#;
        assert_eq!(decode_response(body), Ok(Err(Failure::new("SESSION_INVALID", vec![]))));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let calls: &[&[u8]] = &[
            b"",
            b"[]",
            b"{\"params\":[],\"id\":1}",
            b"{\"method\":\"x\",\"params\":[]}",
            b"{\"method\":\"x\",\"params\":[],\"id\":null}",
            b"{\"method\":\"x\",\"params\":5,\"id\":1}",
            b"{\"method\":\"x\",\"params\":[18446744073709551615],\"id\":1}",
            b"{\"jsonrpc\":\"3\",\"method\":\"x\",\"id\":1}",
        ];
        for body in calls {
            assert!(decode_call(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let responses: &[&[u8]] = &[
            b"{}",
            b"{\"error\":[],\"id\":1}",
            b"{\"error\":5,\"id\":1}",
            b"{\"error\":{\"code\":1},\"id\":1}",
            b"{\"result\":",
        ];
        for body in responses {
            assert!(decode_response(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let deep = format!("{{\"result\":{}{},\"id\":1}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(decode_response(deep.as_bytes()), Err(WireError::TooDeep(MAX_DEPTH)));
    }
}
