//! Typed helpers over the generic calls: records, lookups, events.

use std::collections::BTreeMap;
use std::time::Duration;

use xenvault_xapi_wire::Value;

use crate::{Client, Error, Ref};

/// `event.from`'s operation field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOperation {
    Add,
    Mod,
    Del,
}

/// One entry of `event.from`'s `events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub timestamp: String,
    pub class: String,
    pub operation: EventOperation,
    pub reference: Ref,
    /// The object's record after the change; absent for deletions.
    pub snapshot: Option<Value>,
}

/// What `event.from` returns: the events and the token to pass next time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    pub events: Vec<Event>,
    pub token: String,
    pub valid_ref_counts: BTreeMap<String, i64>,
}

impl Client {
    /// `<class>.get_all_records`, keyed by reference.
    pub async fn get_all_records(&self, class: &str) -> Result<BTreeMap<Ref, Value>, Error> {
        match self.call(&format!("{class}.get_all_records"), &[]).await? {
            Value::Struct(records) => Ok(records.into_iter().map(|(k, v)| (Ref::new(k), v)).collect()),
            other => Err(Error::malformed(format!("{class}.get_all_records returned {other:?}"))),
        }
    }

    pub async fn get_record(&self, class: &str, reference: &Ref) -> Result<Value, Error> {
        self.call(&format!("{class}.get_record"), &[reference.into()]).await
    }

    pub async fn get_by_uuid(&self, class: &str, uuid: &str) -> Result<Ref, Error> {
        Ref::from_value(&self.call(&format!("{class}.get_by_uuid"), &[uuid.into()]).await?)
    }

    /// `event.from(classes, token, timeout)`: waits up to `timeout` for changes after
    /// `token` ("" to start from the beginning).
    pub async fn event_from(&self, classes: &[&str], token: &str, timeout: Duration) -> Result<EventBatch, Error> {
        let classes = Value::Array(classes.iter().map(|c| Value::from(*c)).collect());
        let params = [classes, token.into(), Value::Double(timeout.as_secs_f64())];
        // The call itself lasts up to `timeout`; give the answer time to arrive after that.
        let answer = self.call_timeout("event.from", &params, timeout + Duration::from_secs(60)).await?;
        parse_event_batch(&answer)
    }
}

fn parse_event_batch(v: &Value) -> Result<EventBatch, Error> {
    let field = |k: &str| v.get(k).ok_or_else(|| Error::malformed(format!("event.from: no {k}")));
    let events = field("events")?
        .as_array()
        .ok_or_else(|| Error::malformed("event.from: events is not an array"))?
        .iter()
        .map(parse_event)
        .collect::<Result<_, _>>()?;
    let token = field("token")?.as_str().unwrap_or_default().to_owned();
    let valid_ref_counts = v
        .get("valid_ref_counts")
        .and_then(Value::as_struct)
        .map(|m| m.iter().filter_map(|(k, n)| Some((k.clone(), n.as_i64()?))).collect())
        .unwrap_or_default();
    Ok(EventBatch { events, token, valid_ref_counts })
}

fn parse_event(v: &Value) -> Result<Event, Error> {
    let text = |k: &str| {
        v.get(k).and_then(Value::to_text).ok_or_else(|| Error::malformed(format!("event without {k}: {v:?}")))
    };
    let operation = match text("operation")?.as_str() {
        "add" => EventOperation::Add,
        "mod" => EventOperation::Mod,
        "del" => EventOperation::Del,
        other => {
            return Err(Error::malformed(format!("unknown event operation {other:?}")));
        }
    };
    Ok(Event {
        id: text("id")?.parse().map_err(|_| Error::malformed("event id is not a number"))?,
        timestamp: text("timestamp")?,
        class: text("class")?,
        operation,
        reference: Ref::new(text("ref")?),
        snapshot: v.get("snapshot").filter(|s| s.as_struct().is_some()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvault_xapi_wire::xmlrpc;

    #[test]
    fn parses_event_batches_from_xml_rpc() {
        let xml = "<value><struct>\
            <member><name>events</name><value><array><data><value><struct>\
            <member><name>id</name><value>12</value></member>\
            <member><name>timestamp</name><value>1700000000.1</value></member>\
            <member><name>class</name><value>vm</value></member>\
            <member><name>operation</name><value>mod</value></member>\
            <member><name>ref</name><value>OpaqueRef:v</value></member>\
            <member><name>snapshot</name><value><struct><member><name>name_label</name><value>a</value></member></struct></value></member>\
            </struct></value></data></array></value></member>\
            <member><name>valid_ref_counts</name><value><struct><member><name>VM</name><value><i4>3</i4></value></member></struct></value></member>\
            <member><name>token</name><value>00000000000000000012,00000000000000000000</value></member>\
            </struct></value>";
        let batch = parse_event_batch(&xmlrpc::parse_value(xml).expect("xml")).expect("batch");
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].id, 12);
        assert_eq!(batch.events[0].operation, EventOperation::Mod);
        assert_eq!(batch.events[0].reference, Ref::new("OpaqueRef:v"));
        assert!(batch.events[0].snapshot.is_some());
        assert_eq!(batch.valid_ref_counts.get("VM"), Some(&3));
        assert_eq!(batch.token, "00000000000000000012,00000000000000000000");
    }

    #[test]
    fn rejects_bad_events() {
        let bad = Value::Struct(BTreeMap::from([("events".to_owned(), Value::from("x"))]));
        assert!(parse_event_batch(&bad).is_err());
    }
}
