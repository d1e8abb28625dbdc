//! `ova.xml`: `{version: {...}, objects: [{class, id, snapshot}]}` as one XML-RPC value.

use std::collections::BTreeMap;

use xenvault_xapi_wire::Value;
use xenvault_xapi_wire::xmlrpc::{parse_value, write_value};

use crate::{Error, Result};

/// The `version` struct: which host and xapi wrote the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaVersion {
    pub hostname: String,
    pub date: String,
    pub product_version: String,
    pub product_brand: String,
    pub build_number: String,
    pub xapi_major: i64,
    pub xapi_minor: i64,
    /// 2 for archives with inline chunk checksums (all current xapi versions).
    pub export_vsn: i64,
}

/// One exported database object: `class` is e.g. `VM`, `VDI`; `id` the archive-local
/// reference (`Ref:N`) other records and the disk chunks use.
#[derive(Debug, Clone, PartialEq)]
pub struct OvaObject {
    pub class: String,
    pub id: String,
    pub snapshot: Value,
}

/// The text of `ova.xml`. xapi writes `version` before `objects` and the version's
/// members in its own order, which a sorted struct cannot express, so the two outer
/// levels are written here.
pub fn ova_xml(version: &OvaVersion, objects: &[OvaObject]) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str("<value><struct><member><name>version</name><value><struct>");
    let fields: [(&str, Value); 8] = [
        ("hostname", version.hostname.as_str().into()),
        ("date", version.date.as_str().into()),
        ("product_version", version.product_version.as_str().into()),
        ("product_brand", version.product_brand.as_str().into()),
        ("build_number", version.build_number.as_str().into()),
        ("xapi_major", version.xapi_major.into()),
        ("xapi_minor", version.xapi_minor.into()),
        ("export_vsn", version.export_vsn.into()),
    ];
    for (name, value) in &fields {
        out.push_str("<member><name>");
        out.push_str(name);
        out.push_str("</name>");
        write_value(value, &mut out);
        out.push_str("</member>");
    }
    out.push_str("</struct></value></member><member><name>objects</name>");
    let objects = objects
        .iter()
        .map(|o| {
            Value::Struct(BTreeMap::from([
                ("class".to_owned(), Value::Str(o.class.clone())),
                ("id".to_owned(), Value::Str(o.id.clone())),
                ("snapshot".to_owned(), o.snapshot.clone()),
            ]))
        })
        .collect();
    write_value(&Value::Array(objects), &mut out);
    out.push_str("</member></struct></value>");
    out
}

/// Parses `ova.xml`.
pub(crate) fn parse_ova_xml(text: &str) -> Result<(OvaVersion, Vec<OvaObject>)> {
    let value = parse_value(text).map_err(|e| Error::Metadata(e.to_string()))?;
    let Value::Struct(mut top) = value else {
        return Err(Error::Metadata("not a struct".into()));
    };
    let version = top
        .remove("version")
        .ok_or_else(|| Error::Metadata("no version struct (legacy <appliance> format?)".into()))?;
    let text_field = |name: &str| -> Result<String> {
        version.get(name).and_then(Value::to_text).ok_or_else(|| Error::Metadata(format!("version.{name} missing")))
    };
    let int_field = |name: &str| -> Result<i64> {
        version
            .get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Metadata(format!("version.{name} missing or not an integer")))
    };
    let version = OvaVersion {
        hostname: text_field("hostname")?,
        date: text_field("date")?,
        product_version: text_field("product_version")?,
        product_brand: text_field("product_brand")?,
        build_number: text_field("build_number")?,
        xapi_major: int_field("xapi_major")?,
        xapi_minor: int_field("xapi_minor")?,
        // xapi treats a missing export_vsn as 0.
        export_vsn: version.get("export_vsn").and_then(Value::as_i64).unwrap_or(0),
    };
    let Some(Value::Array(items)) = top.remove("objects") else {
        return Err(Error::Metadata("objects missing or not an array".into()));
    };
    let objects = items
        .into_iter()
        .map(|item| {
            let Value::Struct(mut fields) = item else {
                return Err(Error::Metadata("an object is not a struct".into()));
            };
            let mut text = |name: &str| match fields.remove(name) {
                Some(Value::Str(s)) => Ok(s),
                _ => Err(Error::Metadata(format!("an object's {name} is missing"))),
            };
            let class = text("class")?;
            let id = text("id")?;
            let snapshot =
                fields.remove("snapshot").ok_or_else(|| Error::Metadata(format!("object {id} has no snapshot")))?;
            Ok(OvaObject { class, id, snapshot })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((version, objects))
}
