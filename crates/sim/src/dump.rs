//! `/pool/xmldbdump`: the database in xapi's XML dump layout.

use crate::db::{CLASSES, Db};
use xenvault_xapi_wire::{Value, xmlrpc};

/// An attribute value: XML-escaped, with newlines as `%0A` as xapi's database dump writes
/// them (an XML parser would turn a raw newline in an attribute into a space).
fn escape(s: &str, out: &mut String) {
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push_str("%0A");
        }
        xmlrpc::escape_into(line, out);
    }
}

/// xapi's S-expression text for a field value (sets and maps as lists).
fn sexpr(v: &Value) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    match v {
        Value::Str(s) | Value::DateTime(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Double(d) => format!("{d}"),
        Value::Array(items) => {
            format!("({})", items.iter().map(|i| quote(&sexpr(i))).collect::<Vec<_>>().join(" "))
        }
        Value::Struct(m) => format!(
            "({})",
            m.iter().map(|(k, v)| format!("({} {})", quote(k), quote(&sexpr(v)))).collect::<Vec<_>>().join(" ")
        ),
    }
}

/// Column name as xapi's schema spells it (`name_label` is `name__label`).
fn column(field: &str) -> String {
    match field.strip_prefix("name_") {
        Some(rest) => format!("name__{rest}"),
        None => field.to_owned(),
    }
}

pub fn database_xml(db: &Db) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><database><manifest>");
    out.push_str("<pair key=\"schema_major_vsn\" value=\"5\"/><pair key=\"schema_minor_vsn\" value=\"786\"/>");
    out.push_str(&format!("<pair key=\"generation_count\" value=\"{}\"/></manifest>", db.last_event_id()));
    for class in CLASSES {
        out.push_str(&format!("<table name=\"{class}\">"));
        for reference in db.all_of(class) {
            let Ok(rec) = db.get(class, &reference) else { continue };
            out.push_str("<row ref=\"");
            escape(&reference, &mut out);
            out.push('"');
            for (k, v) in rec {
                out.push_str(&format!(" {}=\"", column(k)));
                escape(&sexpr(v), &mut out);
                out.push('"');
            }
            out.push_str("/>");
        }
        out.push_str("</table>");
    }
    out.push_str("</database>");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn attribute_values_escape_markup_and_newlines() {
        let mut out = String::new();
        super::escape("a<b & \"c\"\nd\te", &mut out);
        assert_eq!(out, "a&lt;b &amp; &quot;c&quot;%0Ad\te");
    }
}
