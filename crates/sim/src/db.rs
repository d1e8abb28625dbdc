//! The object database: every XenAPI object as a record of xapi-named fields, keyed
//! by `OpaqueRef:<uuid>`, plus the event log that `event.from` reads.

use crate::error::{ApiError, ApiResult};
use std::collections::{BTreeMap, HashMap, VecDeque};
use xenvault_xapi_wire::Value;

pub type Record = BTreeMap<String, Value>;

pub const NULL_REF: &str = "OpaqueRef:NULL";

/// The classes the simulator knows, spelled as xapi spells them.
pub const CLASSES: &[&str] = &[
    "session",
    "pool",
    "host",
    "host_metrics",
    "SR",
    "PBD",
    "network",
    "PIF",
    "VM",
    "VM_metrics",
    "VM_guest_metrics",
    "VBD",
    "VDI",
    "VIF",
    "task",
    "message",
];

/// xapi matches class names case-insensitively (`vm.get_all` works too).
pub fn canonical_class(name: &str) -> Option<&'static str> {
    CLASSES.iter().copied().find(|c| c.eq_ignore_ascii_case(name))
}

pub fn new_ref() -> String {
    format!("OpaqueRef:{}", uuid::Uuid::new_v4())
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[derive(Debug, Clone)]
pub struct Object {
    pub class: &'static str,
    pub fields: Record,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub class: &'static str,
    pub operation: &'static str,
    pub reference: String,
}

/// Events kept for `event.from`; older tokens get `EVENTS_LOST` like xapi.
const EVENT_RING: usize = 20_000;

#[derive(Debug, Default)]
pub struct Db {
    objects: HashMap<String, Object>,
    by_uuid: HashMap<String, String>,
    events: VecDeque<Event>,
    next_event: u64,
    /// Counts changes to objects that are saved (not sessions or tasks).
    saved_changes: u64,
}

/// Classes xapi forgets on restart: never saved, and their changes need no save.
pub const TRANSIENT: &[&str] = &["session", "task"];

impl Db {
    pub fn new() -> Self {
        Db::default()
    }

    pub fn objects(&self) -> impl Iterator<Item = (&String, &Object)> {
        self.objects.iter()
    }

    pub fn object(&self, reference: &str) -> Option<&Object> {
        self.objects.get(reference)
    }

    pub fn insert(&mut self, class: &'static str, reference: String, fields: Record) {
        if let Some(uuid) = fields.get("uuid").and_then(Value::as_str) {
            self.by_uuid.insert(uuid.to_owned(), reference.clone());
        }
        self.push_event(class, "add", &reference);
        self.objects.insert(reference, Object { class, fields });
    }

    /// Loads an object without an event (restoring persisted state).
    pub fn restore(&mut self, class: &'static str, reference: String, fields: Record) {
        if let Some(uuid) = fields.get("uuid").and_then(Value::as_str) {
            self.by_uuid.insert(uuid.to_owned(), reference.clone());
        }
        self.objects.insert(reference, Object { class, fields });
    }

    pub fn remove(&mut self, reference: &str) -> Option<Object> {
        let obj = self.objects.remove(reference)?;
        if let Some(uuid) = obj.fields.get("uuid").and_then(Value::as_str) {
            self.by_uuid.remove(uuid);
        }
        self.push_event(obj.class, "del", reference);
        Some(obj)
    }

    pub fn exists(&self, class: &str, reference: &str) -> bool {
        self.objects.get(reference).is_some_and(|o| o.class == class)
    }

    pub fn get(&self, class: &str, reference: &str) -> ApiResult<&Record> {
        match self.objects.get(reference) {
            Some(o) if o.class == class => Ok(&o.fields),
            _ => Err(ApiError::handle_invalid(class, reference)),
        }
    }

    pub fn field(&self, class: &str, reference: &str, name: &str) -> ApiResult<&Value> {
        self.get(class, reference)?.get(name).ok_or_else(|| ApiError::internal(format!("{class} has no field {name}")))
    }

    pub fn str_field(&self, class: &str, reference: &str, name: &str) -> ApiResult<String> {
        Ok(self.field(class, reference, name)?.as_str().unwrap_or_default().to_owned())
    }

    pub fn bool_field(&self, class: &str, reference: &str, name: &str) -> ApiResult<bool> {
        Ok(self.field(class, reference, name)?.as_bool().unwrap_or_default())
    }

    /// A set-of-refs field as strings.
    pub fn refs_field(&self, class: &str, reference: &str, name: &str) -> ApiResult<Vec<String>> {
        Ok(string_list(self.field(class, reference, name)?))
    }

    /// Changes fields of one object and records one `mod` event.
    pub fn update(&mut self, class: &str, reference: &str, change: impl FnOnce(&mut Record)) -> ApiResult<()> {
        let obj = match self.objects.get_mut(reference) {
            Some(o) if o.class == class => o,
            _ => return Err(ApiError::handle_invalid(class, reference)),
        };
        change(&mut obj.fields);
        let class = obj.class;
        self.push_event(class, "mod", reference);
        Ok(())
    }

    pub fn set(&mut self, class: &str, reference: &str, name: &str, value: Value) -> ApiResult<()> {
        self.update(class, reference, |r| {
            r.insert(name.to_owned(), value);
        })
    }

    /// Adds `item` to a set field (no duplicates, like xapi's Set semantics).
    pub fn add_to_set(&mut self, class: &str, reference: &str, name: &str, item: &str) -> ApiResult<()> {
        self.update(class, reference, |r| {
            let mut items = r.get(name).map(string_list).unwrap_or_default();
            if !items.iter().any(|i| i == item) {
                items.push(item.to_owned());
            }
            r.insert(name.to_owned(), Value::from(items));
        })
    }

    pub fn remove_from_set(&mut self, class: &str, reference: &str, name: &str, item: &str) -> ApiResult<()> {
        self.update(class, reference, |r| {
            let items: Vec<String> =
                r.get(name).map(string_list).unwrap_or_default().into_iter().filter(|i| i != item).collect();
            r.insert(name.to_owned(), Value::from(items));
        })
    }

    /// The ref of an object by uuid (`UUID_INVALID` like xapi when absent).
    pub fn by_uuid(&self, class: &str, uuid: &str) -> ApiResult<String> {
        self.by_uuid
            .get(uuid)
            .filter(|r| self.exists(class, r))
            .cloned()
            .ok_or_else(|| ApiError::new("UUID_INVALID", [class, uuid]))
    }

    pub fn all_of(&self, class: &str) -> Vec<String> {
        let mut refs: Vec<String> =
            self.objects.iter().filter(|(_, o)| o.class == class).map(|(r, _)| r.clone()).collect();
        refs.sort();
        refs
    }

    /// Refs of `class` whose string field `name` equals `value`.
    pub fn find(&self, class: &str, name: &str, value: &str) -> Vec<String> {
        let mut refs: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, o)| o.class == class && o.fields.get(name).and_then(Value::as_str) == Some(value))
            .map(|(r, _)| r.clone())
            .collect();
        refs.sort();
        refs
    }

    fn push_event(&mut self, class: &'static str, operation: &'static str, reference: &str) {
        self.next_event += 1;
        if !TRANSIENT.contains(&class) {
            self.saved_changes += 1;
        }
        self.events.push_back(Event { id: self.next_event, class, operation, reference: reference.to_owned() });
        if self.events.len() > EVENT_RING {
            self.events.pop_front();
        }
    }

    pub fn saved_changes(&self) -> u64 {
        self.saved_changes
    }

    pub fn last_event_id(&self) -> u64 {
        self.next_event
    }

    pub fn set_last_event_id(&mut self, id: u64) {
        self.next_event = id;
    }

    /// Events after `since`; `None` when the ring no longer holds them all.
    pub fn events_since(&self, since: u64) -> Option<Vec<&Event>> {
        if let Some(first) = self.events.front()
            && since + 1 < first.id
        {
            return None;
        }
        Some(self.events.iter().filter(|e| e.id > since).collect())
    }
}

/// A set or list value as strings (refs, tags, ...).
pub fn string_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// An empty map value.
pub fn empty_map() -> Value {
    Value::Struct(BTreeMap::new())
}

/// A string-to-string map value.
pub fn str_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Struct(pairs.into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect())
}

/// The current time as xapi writes dates (`20261123T08:37:12Z`).
pub fn now_date() -> Value {
    Value::DateTime(chrono::Utc::now().format("%Y%m%dT%H:%M:%SZ").to_string())
}

/// The epoch date xapi uses for "never".
pub fn epoch_date() -> Value {
    Value::DateTime("19700101T00:00:00Z".to_owned())
}
