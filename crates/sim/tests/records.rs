//! Records against xapi's datamodel: every class the simulator serves has exactly the
//! fields that `datamodel/fields.tsv` (derived from xapi's `doc/data/xenapi.json`) lists,
//! each with the JSON-RPC type of its datamodel type.

mod common;

use common::*;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

/// class -> field -> kind, read from the checked-in table.
fn datamodel() -> BTreeMap<String, BTreeMap<String, String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/datamodel/fields.tsv");
    let mut classes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        classes.entry(cols[0].to_owned()).or_default().insert(cols[1].to_owned(), cols[2].to_owned());
    }
    classes
}

fn has_kind(v: &Json, kind: &str) -> bool {
    match kind {
        "string" | "enum" | "ref" | "datetime" => v.is_string(),
        "int" => v.is_i64(),
        "float" => v.is_number(),
        "bool" => v.is_boolean(),
        "set" => v.as_array().is_some_and(|a| a.iter().all(Json::is_string)),
        "int_set" => v.as_array().is_some_and(|a| a.iter().all(Json::is_i64)),
        "map" => v.is_object(),
        _ => false,
    }
}

async fn rpc(url: &str, method: &str, params: Json) -> Json {
    let body = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
    let answer: Json = http().post(format!("{url}/jsonrpc")).json(&body).send().await.unwrap().json().await.unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

#[tokio::test]
async fn every_served_class_has_exactly_the_datamodel_fields() {
    let setup = Setup::new().await;
    let url = setup.sim.url.clone();
    // A task and a snapshot, so that those records exist too.
    setup.c.call("task.create", vec!["records".into(), "".into()]).await.unwrap();
    setup.c.call("VM.snapshot", vec![setup.vm.clone().into(), "records".into()]).await.unwrap();

    let table = datamodel();
    let methods = rpc(&url, "system.listMethods", serde_json::json!([])).await;
    let served: BTreeSet<String> = methods
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str()?.strip_suffix(".get_all_records"))
        .filter(|c| !c.starts_with("Async."))
        .map(str::to_owned)
        .collect();
    assert!(served.len() >= 15, "{served:?}");
    let mut problems = Vec::new();
    for class in &served {
        let Some(fields) = table.get(class) else {
            problems.push(format!("{class} is not a datamodel class"));
            continue;
        };
        let records = rpc(&url, &format!("{class}.get_all_records"), serde_json::json!([setup.sid])).await;
        let records = records.as_object().unwrap();
        if records.is_empty() && class != "message" {
            problems.push(format!("{class}: no records to check"));
        }
        for (reference, rec) in records {
            let rec = rec.as_object().unwrap();
            let have: BTreeSet<&String> = rec.keys().collect();
            let want: BTreeSet<&String> = fields.keys().collect();
            let missing: Vec<_> = want.difference(&have).collect();
            let extra: Vec<_> = have.difference(&want).collect();
            if !missing.is_empty() || !extra.is_empty() {
                problems.push(format!("{class} {reference}: missing {missing:?}, not in the datamodel {extra:?}"));
            }
            for (name, v) in rec {
                if let Some(kind) = fields.get(name)
                    && !has_kind(v, kind)
                {
                    problems.push(format!("{class}.{name} should be {kind}, is {v}"));
                }
            }
        }
    }
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
