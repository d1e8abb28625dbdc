//! `/pool/xmldbdump`: the database in xapi's XML dump layout.

use crate::db::{CLASSES, Db};
use xenvault_xapi_wire::Value;

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("%0A"),
            c => out.push(c),
        }
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
