//! Saving and loading the pool database and CBT logs (`db.json` in the state dir).
//! Sessions and tasks are not kept, as xapi forgets them on restart.

use crate::cbt::CbtLogs;
use crate::db::{Db, Record, TRANSIENT, canonical_class};
use crate::state::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use xenvault_xapi_wire::Value;

#[derive(Serialize)]
struct Saving<'a> {
    last_event: u64,
    objects: BTreeMap<String, SavedObject>,
    cbt: &'a CbtLogs,
}

#[derive(Deserialize)]
struct Saved {
    last_event: u64,
    objects: BTreeMap<String, SavedObject>,
    cbt: CbtLogs,
}

#[derive(Serialize, Deserialize)]
struct SavedObject {
    class: String,
    fields: Map<String, Json>,
}

const FILE: &str = "db.json";

pub fn exists(dir: &Path) -> bool {
    dir.join(FILE).exists()
}

/// The state as `db.json` holds it (taken under the state lock, written outside it).
pub fn serialize(st: &State) -> io::Result<Vec<u8>> {
    let objects = st
        .db
        .objects()
        .filter(|(_, o)| !TRANSIENT.contains(&o.class))
        .map(|(r, o)| {
            let fields = o.fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect();
            (r.clone(), SavedObject { class: o.class.to_owned(), fields })
        })
        .collect();
    let saved = Saving { last_event: st.db.last_event_id(), objects, cbt: &st.cbt };
    Ok(serde_json::to_vec(&saved)?)
}

/// Replaces `db.json` in `dir` with `bytes` (whole or not at all).
pub fn write(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join("db.json.tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(tmp, dir.join(FILE))
}

pub fn load(dir: &Path) -> io::Result<(Db, CbtLogs)> {
    let saved: Saved = serde_json::from_slice(&fs::read(dir.join(FILE))?)?;
    let mut db = Db::new();
    for (reference, obj) in saved.objects {
        let class = canonical_class(&obj.class)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown class {}", obj.class)))?;
        let fields: Record = obj.fields.into_iter().map(|(k, v)| (k, from_json(v))).collect();
        // A state saved by an older simulator may lack fields or keep removed ones.
        db.restore(class, reference, crate::datamodel::conform(class, fields));
    }
    db.set_last_event_id(saved.last_event);
    Ok((db, saved.cbt))
}

/// Values keep their XenAPI type through JSON with a one-letter tag.
fn to_json(v: &Value) -> Json {
    match v {
        Value::Str(s) => json!({ "s": s }),
        Value::Int(i) => json!({ "i": i }),
        Value::Bool(b) => json!({ "b": b }),
        Value::Double(d) => json!({ "d": d }),
        Value::DateTime(t) => json!({ "t": t }),
        Value::Array(a) => json!({ "a": a.iter().map(to_json).collect::<Vec<_>>() }),
        Value::Struct(m) => {
            json!({ "m": m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect::<Map<_, _>>() })
        }
    }
}

fn from_json(j: Json) -> Value {
    let Json::Object(map) = j else { return Value::Str(String::new()) };
    let Some((tag, inner)) = map.into_iter().next() else { return Value::Str(String::new()) };
    match (tag.as_str(), inner) {
        ("s", Json::String(s)) => Value::Str(s),
        ("t", Json::String(s)) => Value::DateTime(s),
        ("i", j) => Value::Int(j.as_i64().unwrap_or_default()),
        ("b", j) => Value::Bool(j.as_bool().unwrap_or_default()),
        ("d", j) => Value::Double(j.as_f64().unwrap_or_default()),
        ("a", Json::Array(a)) => Value::Array(a.into_iter().map(from_json).collect()),
        ("m", Json::Object(m)) => Value::Struct(m.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
        _ => Value::Str(String::new()),
    }
}
