//! `event.from`: changes since a token, waiting up to `timeout` seconds when there
//! are none, in xapi's shape (one event per object, current record as snapshot,
//! lowercase class names, tokens `%020d,%020d`).

use super::Args;
use crate::db::CLASSES;
use crate::error::{ApiError, ApiResult};
use crate::state::{SharedSim, State};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use xenvault_xapi_wire::Value;

pub async fn call(sim: &SharedSim, name: &str, args: &Args<'_>) -> ApiResult<Value> {
    match name {
        "from" => from(sim, args).await,
        "register" | "unregister" => {
            args.expect(2)?;
            let session = args.str(0)?.to_owned();
            let classes = crate::db::string_list(args.value(1)?);
            let mut st = sim.lock();
            let last = st.db.last_event_id();
            let sub =
                st.subscriptions.entry(session).or_insert_with(|| Subscription { classes: Vec::new(), last_id: last });
            if name == "register" {
                sub.classes.extend(classes);
            } else {
                sub.classes.retain(|c| !classes.contains(c));
            }
            Ok(Value::from(""))
        }
        "next" => next(sim, args).await,
        "get_current_id" => {
            args.expect(1)?;
            Ok(Value::Int(sim.lock().db.last_event_id() as i64))
        }
        "inject" => {
            args.expect(3)?;
            let (class, reference) = (args.str(1)?, args.str(2)?);
            let class = crate::db::canonical_class(class)
                .ok_or_else(|| ApiError::new("VALUE_NOT_SUPPORTED", ["class", class]))?;
            sim.with(|st| {
                // A no-op update makes a `mod` event, as xapi's inject does.
                st.db.update(class, reference, |_| {})?;
                Ok(Value::from(token(st.db.last_event_id())))
            })
        }
        _ => Err(ApiError::method_unknown(args.method)),
    }
}

fn token(id: u64) -> String {
    format!("{id:020},{:020}", 0)
}

fn parse_token(t: &str) -> ApiResult<Option<u64>> {
    if t.is_empty() {
        return Ok(None);
    }
    let first = t.split(',').next().unwrap_or(t);
    first.parse().map(Some).map_err(|_| ApiError::new("EVENT_FROM_TOKEN_PARSE_FAILURE", [t]))
}

/// What a subscription names: a whole class (`vm`, `*`) or one object (`vm/ref`).
fn matches(subs: &[String], class: &str, reference: &str) -> bool {
    subs.iter().any(|s| match s.split_once('/') {
        Some((c, r)) => c.eq_ignore_ascii_case(class) && r == reference,
        None => s == "*" || s.eq_ignore_ascii_case(class),
    })
}

async fn from(sim: &SharedSim, args: &Args<'_>) -> ApiResult<Value> {
    args.expect(4)?;
    let subs = crate::db::string_list(args.value(1)?);
    let since = parse_token(args.str(2)?)?;
    let timeout = match args.value(3)? {
        Value::Double(d) => *d,
        v => v.as_i64().map(|i| i as f64).or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0.0),
    };
    // A NaN or negative timeout means "do not wait" (and must not panic).
    let timeout = if timeout.is_finite() { timeout.clamp(0.0, 86_400.0) } else { 0.0 };
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let notified = sim.changed.notified();
        let answer = {
            let st = sim.lock();
            collect(&st, &subs, since)?
        };
        let has_events = answer.get("events").and_then(Value::as_array).is_some_and(|e| !e.is_empty());
        let now = Instant::now();
        if has_events || now >= deadline {
            return Ok(answer);
        }
        let _ = tokio::time::timeout(deadline - now, notified).await;
    }
}

/// What `event.register` asked for, per session, and how far `event.next` has read.
#[derive(Debug)]
pub struct Subscription {
    classes: Vec<String>,
    last_id: u64,
}

/// `event.next`: every matching event since the last call (not merged per object, as
/// in xapi), waiting for one; `SESSION_NOT_REGISTERED` without `event.register`.
async fn next(sim: &SharedSim, args: &Args<'_>) -> ApiResult<Value> {
    args.expect(1)?;
    let session = args.str(0)?;
    loop {
        let notified = sim.changed.notified();
        {
            let mut st = sim.lock();
            if !st.db.exists("session", session) {
                return Err(ApiError::session_invalid(session));
            }
            let last = st.db.last_event_id();
            let Some(sub) = st.subscriptions.get_mut(session) else {
                return Err(ApiError::new("SESSION_NOT_REGISTERED", [session]));
            };
            let since = std::mem::replace(&mut sub.last_id, last);
            let classes = sub.classes.clone();
            let log = st.db.events_since(since).ok_or_else(|| ApiError::new("EVENTS_LOST", Vec::<String>::new()))?;
            let events: Vec<Value> = log
                .iter()
                .filter(|e| matches(&classes, e.class, &e.reference))
                .map(|e| {
                    let snapshot = st.db.object(&e.reference).map(|o| &o.fields).filter(|_| e.operation != "del");
                    event(e.id, e.class, e.operation, &e.reference, snapshot)
                })
                .collect();
            if !events.is_empty() {
                return Ok(Value::Array(events));
            }
        }
        notified.await;
    }
}

fn collect(st: &State, subs: &[String], since: Option<u64>) -> ApiResult<Value> {
    let mut events = Vec::new();
    let last = st.db.last_event_id();
    match since {
        None => {
            // An empty token means "everything": every object as an `add`.
            let mut all: Vec<_> = st.db.objects().filter(|(r, o)| matches(subs, o.class, r)).collect();
            all.sort_by(|a, b| a.0.cmp(b.0));
            for (r, o) in all {
                events.push(event(last, o.class, "add", r, Some(&o.fields)));
            }
        }
        Some(since) => {
            let log = st.db.events_since(since).ok_or_else(|| ApiError::new("EVENTS_LOST", Vec::<String>::new()))?;
            // One event per object: its latest state, `add` if it appeared since.
            let mut latest: HashMap<&str, (u64, &'static str, bool)> = HashMap::new();
            let mut order = Vec::new();
            for e in log.iter().filter(|e| matches(subs, e.class, &e.reference)) {
                let entry = latest.entry(e.reference.as_str()).or_insert_with(|| {
                    order.push(e.reference.as_str());
                    (e.id, e.class, e.operation == "add")
                });
                entry.0 = e.id;
            }
            for r in order {
                let Some(&(id, class, added)) = latest.get(r) else { continue };
                match st.db.object(r) {
                    Some(o) => events.push(event(id, class, if added { "add" } else { "mod" }, r, Some(&o.fields))),
                    // xapi reports a deletion only for objects the client could have seen.
                    None if added => {}
                    None => events.push(event(id, class, "del", r, None)),
                }
            }
        }
    }
    let counts: BTreeMap<String, Value> =
        CLASSES.iter().map(|c| (c.to_lowercase(), Value::Int(st.db.all_of(c).len() as i64))).collect();
    Ok(Value::Struct(
        [
            ("events".to_owned(), Value::Array(events)),
            ("valid_ref_counts".to_owned(), Value::Struct(counts)),
            ("token".to_owned(), Value::from(token(last))),
        ]
        .into_iter()
        .collect(),
    ))
}

fn event(id: u64, class: &str, op: &str, reference: &str, snapshot: Option<&crate::db::Record>) -> Value {
    let mut m: BTreeMap<String, Value> = [
        ("id", Value::from(id.to_string())),
        ("timestamp", Value::from("0.0")),
        ("class", Value::from(class.to_lowercase())),
        ("operation", Value::from(op)),
        ("ref", Value::from(reference)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(s) = snapshot {
        m.insert("snapshot".into(), Value::Struct(s.clone()));
    }
    Value::Struct(m)
}
