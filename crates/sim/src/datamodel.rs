//! The fields of every XenAPI class with the value xapi gives each on creation, and
//! the calls xapi has, from `datamodel/fields.tsv` and `datamodel/messages.tsv`: tables
//! that `datamodel/generate.py` derives from xapi's `doc/data/xenapi.json`
//! (xapi-project/xen-api e2ee48d, the file as of May 2024). Records hold exactly these
//! fields, as xapi's do.

use crate::db::{NULL_REF, Record};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use xenvault_xapi_wire::Value;

const TABLE: &str = include_str!("../datamodel/fields.tsv");
const MESSAGES: &str = include_str!("../datamodel/messages.tsv");

/// Every `(class, call)` pair of the datamodel, in the table's order.
pub fn messages() -> impl Iterator<Item = (&'static str, &'static str)> {
    MESSAGES.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('\t'))
}

pub fn has_message(class: &str, name: &str) -> bool {
    static SET: OnceLock<HashSet<(&'static str, &'static str)>> = OnceLock::new();
    SET.get_or_init(|| messages().collect()).contains(&(class, name))
}

fn table() -> &'static HashMap<&'static str, Record> {
    static DEFAULTS: OnceLock<HashMap<&'static str, Record>> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let mut classes: HashMap<&str, Record> = HashMap::new();
        for line in TABLE.lines().filter(|l| !l.starts_with('#')) {
            let mut cols = line.split('\t');
            let (Some(class), Some(field), Some(kind), Some(default)) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                panic!("datamodel/fields.tsv: bad line {line:?}");
            };
            classes.entry(class).or_default().insert(field.to_owned(), value(kind, default));
        }
        classes
    })
}

/// The table is checked in and fixed at build time: a bad row is a build defect.
fn value(kind: &str, text: &str) -> Value {
    let items = || text.split(',').filter(|i| !i.is_empty());
    match kind {
        "string" | "enum" => Value::from(text),
        "ref" => Value::from(if text.is_empty() { NULL_REF } else { text }),
        "int" => Value::Int(text.parse().unwrap_or_else(|_| panic!("datamodel int {text:?}"))),
        "float" => Value::Double(text.parse().unwrap_or_else(|_| panic!("datamodel float {text:?}"))),
        "bool" => Value::Bool(text == "true"),
        "datetime" => Value::DateTime(text.to_owned()),
        "set" => Value::Array(items().map(Value::from).collect()),
        "int_set" => Value::Array(items().filter_map(|i| i.parse().ok()).map(Value::Int).collect()),
        "map" => Value::Struct(
            items().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), Value::from(v))).collect(),
        ),
        _ => panic!("datamodel/fields.tsv: unknown kind {kind:?}"),
    }
}

/// Every datamodel field of `class` at xapi's default (none for a class the datamodel
/// does not have).
pub fn fields(class: &str) -> &'static Record {
    static NONE: Record = Record::new();
    table().get(class).unwrap_or(&NONE)
}

/// A new record of `class` with every field at its default.
pub fn defaults(class: &str) -> Record {
    fields(class).clone()
}

/// `rec` with exactly the fields of `class`: missing ones get their default, fields
/// xapi does not have (e.g. removed ones, from an older saved state) are dropped.
pub fn conform(class: &str, mut rec: Record) -> Record {
    let mut out = defaults(class);
    for (name, v) in out.iter_mut() {
        if let Some(given) = rec.remove(name) {
            *v = given;
        }
    }
    out
}
