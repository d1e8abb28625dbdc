//! `PUT /pool/xmldbdump`: reading a database dump back and preparing it the way xapi's
//! `Pool_db_backup.restore_from_xml` does: the schema version must match, the backup's
//! slaves are removed (hosts and their PIFs), the master takes this host's uuid and its
//! control domain ours, and the master's PIFs are matched to this host's by device name
//! (MAC addresses rewritten, the management interface kept).

use crate::datamodel;
use crate::db::{CLASSES, Db, NULL_REF, Record, TRANSIENT, canonical_class, string_list};
use crate::error::{ApiError, ApiResult};
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use std::collections::BTreeMap;
use xenvault_xapi_wire::Value;

/// The schema version our dumps carry; a dump of another version is refused like xapi
/// does (`RESTORE_INCOMPATIBLE_VERSION`).
pub const SCHEMA_MAJOR: i64 = 5;
pub const SCHEMA_MINOR: i64 = 786;

/// A dump read back: its objects by reference.
#[derive(Debug, Default)]
pub struct Restored {
    objects: BTreeMap<String, (&'static str, Record)>,
}

/// Parses a dump (tables the simulator does not model, and columns that are not
/// datamodel fields, such as xapi's `__mtime`, are skipped).
pub fn parse(xml: &[u8]) -> ApiResult<Restored> {
    let text = std::str::from_utf8(xml).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let mut reader = Reader::from_str(text);
    let mut schema: (Option<i64>, Option<i64>) = (None, None);
    let mut table: Option<Option<&'static str>> = None;
    let mut restored = Restored::default();
    let mut closed = false;
    loop {
        let event = reader.read_event().map_err(|e| {
            let at = reader.buffer_position();
            let cut = if at as usize >= text.len() { " (truncated?)" } else { "" };
            invalid(format!("at byte {at}: {e}{cut}"))
        })?;
        match event {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"pair" => {
                let (key, value) = (attribute(&e, "key")?, attribute(&e, "value")?);
                let number = || value.as_deref().and_then(|v| v.parse::<i64>().ok());
                match key.as_deref() {
                    Some("schema_major_vsn") => schema.0 = number(),
                    Some("schema_minor_vsn") => schema.1 = number(),
                    _ => {}
                }
            }
            Event::Start(e) if e.name().as_ref() == b"table" => {
                let name = attribute(&e, "name")?.ok_or_else(|| invalid("a table without a name".into()))?;
                table = Some(canonical_class(&name).filter(|c| !TRANSIENT.contains(c)));
            }
            Event::End(e) if e.name().as_ref() == b"table" => table = None,
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"row" => match table {
                Some(Some(class)) => {
                    let (reference, record) = row(class, &e)?;
                    restored.objects.insert(reference, (class, record));
                }
                Some(None) => {}
                None => return Err(invalid("a row outside any table".into())),
            },
            Event::End(e) if e.name().as_ref() == b"database" => closed = true,
            Event::Eof => break,
            _ => {}
        }
    }
    if !closed {
        return Err(invalid("it ends before </database> (truncated?)".into()));
    }
    match schema {
        (Some(SCHEMA_MAJOR), Some(SCHEMA_MINOR)) => {}
        (Some(_), Some(_)) => return Err(ApiError::new("RESTORE_INCOMPATIBLE_VERSION", Vec::<String>::new())),
        _ => return Err(invalid("its manifest has no schema version".into())),
    }
    Ok(restored)
}

fn invalid(why: String) -> ApiError {
    ApiError::internal(format!("the database dump is not valid: {why}"))
}

fn attribute(e: &BytesStart<'_>, name: &str) -> ApiResult<Option<String>> {
    match e.try_get_attribute(name) {
        Ok(Some(a)) => Ok(Some(a.unescape_value().map_err(|e| invalid(e.to_string()))?.into_owned())),
        Ok(None) => Ok(None),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// One `<row>`: its reference and the record, every field of the class present
/// (missing columns at their default, as xapi's upgrade step fills them).
fn row(class: &'static str, e: &BytesStart<'_>) -> ApiResult<(String, Record)> {
    let mut reference = None;
    let mut record = datamodel::defaults(class);
    for attr in e.attributes() {
        let attr = attr.map_err(|e| invalid(e.to_string()))?;
        let column = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let text = attr.unescape_value().map_err(|e| invalid(e.to_string()))?.replace("%0A", "\n");
        if column == "ref" {
            reference = Some(text);
            continue;
        }
        let field = column.replace("__", "_");
        if let Some(default) = record.get(&field) {
            let value = typed(default, &text).map_err(|why| invalid(format!("{class}.{field}: {why}")))?;
            record.insert(field, value);
        }
    }
    let reference = reference.ok_or_else(|| invalid(format!("a {class} row without a ref")))?;
    Ok((reference, record))
}

/// A column's text as a value of the type the field's default has.
fn typed(default: &Value, text: &str) -> Result<Value, String> {
    Ok(match default {
        Value::Str(_) => Value::from(text),
        Value::DateTime(_) => Value::DateTime(text.to_owned()),
        Value::Int(_) => Value::Int(text.parse().map_err(|_| format!("{text:?} is not an integer"))?),
        Value::Double(_) => Value::Double(text.parse().map_err(|_| format!("{text:?} is not a number"))?),
        Value::Bool(_) => Value::Bool(text.parse().map_err(|_| format!("{text:?} is not true or false"))?),
        Value::Array(items) => {
            let ints = matches!(items.first(), Some(Value::Int(_)));
            let strings = sexpr_list(text)?.into_iter().map(|item| match item {
                Sexpr::Atom(s) if ints => s.parse().map(Value::Int).map_err(|_| format!("{s:?} is not an integer")),
                Sexpr::Atom(s) => Ok(Value::Str(s)),
                Sexpr::List(_) => Err("a nested list in a set".to_owned()),
            });
            Value::Array(strings.collect::<Result<_, _>>()?)
        }
        Value::Struct(_) => {
            let mut map = BTreeMap::new();
            for pair in sexpr_list(text)? {
                let Sexpr::List(kv) = pair else { return Err("a map entry that is not a pair".into()) };
                let [Sexpr::Atom(k), Sexpr::Atom(v)] = <[Sexpr; 2]>::try_from(kv).map_err(|_| "a bad map entry")?
                else {
                    return Err("a map entry that is not two strings".into());
                };
                map.insert(k, Value::Str(v));
            }
            Value::Struct(map)
        }
    })
}

#[derive(Debug, PartialEq)]
enum Sexpr {
    Atom(String),
    List(Vec<Sexpr>),
}

/// xapi's S-expression text of a set or map: `('a' 'b')`, `(('k' 'v'))`; quoted atoms
/// escape `\` and `'` with a backslash. An empty column is an empty list.
fn sexpr_list(text: &str) -> Result<Vec<Sexpr>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut chars = text.chars().peekable();
    let parsed = sexpr(&mut chars)?;
    if chars.any(|c| !c.is_whitespace()) {
        return Err(format!("text after the list in {text:?}"));
    }
    match parsed {
        Sexpr::List(items) => Ok(items),
        Sexpr::Atom(_) => Err(format!("{text:?} is not a list")),
    }
}

fn sexpr(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Sexpr, String> {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
    match chars.next() {
        Some('(') => {
            let mut items = Vec::new();
            loop {
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                if chars.next_if_eq(&')').is_some() {
                    return Ok(Sexpr::List(items));
                }
                if chars.peek().is_none() {
                    return Err("an unclosed list".into());
                }
                items.push(sexpr(chars)?);
            }
        }
        Some('\'') => {
            let mut atom = String::new();
            loop {
                match chars.next() {
                    Some('\\') => atom.push(chars.next().ok_or("an escape at the end")?),
                    Some('\'') => return Ok(Sexpr::Atom(atom)),
                    Some(c) => atom.push(c),
                    None => return Err("an unclosed string".into()),
                }
            }
        }
        other => Err(format!("unexpected {other:?}")),
    }
}

impl Restored {
    fn of_class(&self, class: &str) -> Vec<String> {
        self.objects.iter().filter(|(_, (c, _))| *c == class).map(|(r, _)| r.clone()).collect()
    }

    fn field(&self, reference: &str, name: &str) -> Option<&Value> {
        self.objects.get(reference).and_then(|(_, rec)| rec.get(name))
    }

    fn text(&self, reference: &str, name: &str) -> String {
        self.field(reference, name).and_then(Value::as_str).unwrap_or_default().to_owned()
    }

    fn set(&mut self, reference: &str, name: &str, value: Value) {
        if let Some((_, rec)) = self.objects.get_mut(reference) {
            rec.insert(name.to_owned(), value);
        }
    }

    /// What `prepare_database_for_restore` does, `current` being the running database
    /// and `localhost` this host in it.
    pub fn prepare(&mut self, current: &Db, localhost: &str) -> ApiResult<()> {
        let pool = self.of_class("pool").into_iter().next().ok_or_else(|| invalid("it has no pool".into()))?;
        let master = self.text(&pool, "master");
        if !matches!(self.objects.get(&master), Some(("host", _))) {
            return Err(invalid(format!("its pool master {master} is not one of its hosts")));
        }
        for host in self.of_class("host").into_iter().filter(|h| *h != master) {
            for pif in self.field(&host, "PIFs").map(string_list).unwrap_or_default() {
                self.objects.remove(&pif);
            }
            self.objects.remove(&host);
        }
        self.set(&master, "uuid", Value::from(current.str_field("host", localhost, "uuid")?));
        let dom0 = self.text(&master, "control_domain");
        if dom0 != NULL_REF && self.objects.contains_key(&dom0) {
            let our_dom0 = current.str_field("host", localhost, "control_domain")?;
            self.set(&dom0, "uuid", Value::from(current.str_field("VM", &our_dom0, "uuid")?));
        }
        let our_pifs = current.refs_field("host", localhost, "PIFs")?;
        let pif = |r: &String, name: &str| current.field("PIF", r, name).ok().cloned();
        let physical: BTreeMap<String, Value> = our_pifs
            .iter()
            .filter(|r| pif(r, "physical").and_then(|v| v.as_bool()).unwrap_or(false))
            .filter_map(|r| Some((pif(r, "device")?.as_str()?.to_owned(), pif(r, "MAC")?)))
            .collect();
        let managed: Vec<String> = our_pifs
            .iter()
            .filter(|r| pif(r, "management").and_then(|v| v.as_bool()).unwrap_or(false))
            .filter_map(|r| pif(r, "device")?.as_str().map(str::to_owned))
            .collect();
        let management_device = match managed.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let mut devices_in_backup = Vec::new();
        let mut management_found = false;
        for backup_pif in self.field(&master, "PIFs").map(string_list).unwrap_or_default() {
            if !self.objects.contains_key(&backup_pif) {
                continue;
            }
            let device = self.text(&backup_pif, "device");
            let is_management = management_device.as_deref() == Some(device.as_str());
            management_found |= is_management;
            self.set(&backup_pif, "management", Value::Bool(is_management));
            if self.field(&backup_pif, "physical").and_then(Value::as_bool).unwrap_or(false) {
                let mac = physical
                    .get(&device)
                    .ok_or_else(|| ApiError::new("RESTORE_TARGET_MISSING_DEVICE", [device.clone()]))?;
                self.set(&backup_pif, "MAC", mac.clone());
            }
            devices_in_backup.insert(0, device);
        }
        if management_device.is_some() && !management_found {
            return Err(ApiError::new("RESTORE_TARGET_MGMT_IF_NOT_IN_BACKUP", devices_in_backup));
        }
        Ok(())
    }

    /// The database xapi starts with after the restore: the dump's objects, no sessions
    /// or tasks (a restart forgets them), the event counter carried on.
    pub fn into_db(self, last_event: u64) -> Db {
        let mut db = Db::new();
        for (reference, (class, record)) in self.objects {
            debug_assert!(CLASSES.contains(&class));
            db.restore(class, reference, record);
        }
        db.set_last_event_id(last_event);
        db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_maps_read_back_with_escapes() {
        let set = typed(&Value::Array(vec![]), r"('a' 'it\'s' 'back\\slash')").unwrap();
        assert_eq!(set, Value::Array(vec!["a".into(), "it's".into(), r"back\slash".into()]));
        let map = typed(&Value::Struct(BTreeMap::new()), "(('k' 'v') ('x' ''))").unwrap();
        assert_eq!(map.get("k").and_then(Value::as_str), Some("v"));
        assert_eq!(map.get("x").and_then(Value::as_str), Some(""));
        assert_eq!(typed(&Value::Array(vec![Value::Int(0)]), "('1' '2')").unwrap(), Value::from(vec![1i64, 2]));
        assert!(typed(&Value::Array(vec![]), "('a'").unwrap_err().contains("unclosed"));
        assert!(typed(&Value::Int(0), "x").unwrap_err().contains("not an integer"));
    }

    #[test]
    fn truncated_and_foreign_dumps_are_refused() {
        let head = r#"<database><manifest><pair key="schema_major_vsn" value="5"/><pair key="schema_minor_vsn" value="786"/></manifest><table name="pool">"#;
        assert!(parse(head.as_bytes()).unwrap_err().to_string().contains("truncated"));
        let other = r#"<database><manifest><pair key="schema_major_vsn" value="5"/><pair key="schema_minor_vsn" value="35"/></manifest></database>"#;
        assert_eq!(parse(other.as_bytes()).unwrap_err().code, "RESTORE_INCOMPATIBLE_VERSION");
        assert!(parse(b"not xml at all").unwrap_err().to_string().contains("not valid"));
    }
}
