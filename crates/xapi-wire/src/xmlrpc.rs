//! XML-RPC as xapi writes and reads it (`POST /`). Output follows xapi's encoder (ocaml-rpc
//! `Xmlrpc`): strings and int64 as bare `<value>text</value>`, booleans as `0`/`1`, doubles
//! with `%.16g`, answers as a `{Status, Value | ErrorDescription}` struct, never a fault.
//! Input is read leniently like xapi does: typed `<string>`, `<int>`, `<i4>`, `<i8>` too.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::{Failure, MAX_DEPTH, Value, WireError};

const XML_DECL: &str = "<?xml version=\"1.0\"?>";

/// A `<methodCall>` document.
pub fn encode_call(method: &str, params: &[Value]) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(XML_DECL);
    out.push_str("<methodCall><methodName>");
    escape_into(method, &mut out);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

/// A `<methodResponse>` carrying xapi's status struct. Members are written in xapi's order
/// (`Status` first), which a `Value::Struct` (sorted) could not express.
pub fn encode_response(result: &Result<Value, Failure>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(XML_DECL);
    out.push_str("<methodResponse><params><param><value><struct>");
    let (status, key, value) = match result {
        Ok(v) => ("Success", "Value", std::borrow::Cow::Borrowed(v)),
        Err(f) => ("Failure", "ErrorDescription", std::borrow::Cow::Owned(Value::Array(f.to_description()))),
    };
    write_member("Status", &Value::Str(status.to_owned()), &mut out);
    write_member(key, &value, &mut out);
    out.push_str("</struct></value></param></params></methodResponse>");
    out
}

/// Appends one `<value>` element.
pub fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Str(s) => {
            out.push_str("<value>");
            escape_into(s, out);
            out.push_str("</value>");
        }
        Value::Int(i) => {
            out.push_str("<value>");
            out.push_str(&i.to_string());
            out.push_str("</value>");
        }
        Value::Bool(b) => {
            out.push_str("<value><boolean>");
            out.push_str(if *b { "1" } else { "0" });
            out.push_str("</boolean></value>");
        }
        Value::Double(d) => {
            out.push_str("<value><double>");
            out.push_str(&format_g16(*d));
            out.push_str("</double></value>");
        }
        Value::DateTime(s) => {
            out.push_str("<value><dateTime.iso8601>");
            escape_into(s, out);
            out.push_str("</dateTime.iso8601></value>");
        }
        Value::Array(items) => {
            out.push_str("<value><array><data>");
            for item in items {
                write_value(item, out);
            }
            out.push_str("</data></array></value>");
        }
        Value::Struct(members) => {
            out.push_str("<value><struct>");
            for (name, value) in members {
                write_member(name, value, out);
            }
            out.push_str("</struct></value>");
        }
    }
}

fn write_member(name: &str, value: &Value, out: &mut String) {
    out.push_str("<member><name>");
    escape_into(name, out);
    out.push_str("</name>");
    write_value(value, out);
    out.push_str("</member>");
}

/// xapi's escaping: the four markup characters become entities and control characters
/// that XML 1.0 cannot carry are dropped. The one XML escape of the workspace (text and
/// double-quoted attribute values alike).
pub fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' => {}
            c => out.push(c),
        }
    }
}

/// C's `%.16g`, which xapi uses for doubles (enough digits to round-trip most values).
fn format_g16(d: f64) -> String {
    const PRECISION: i32 = 16;
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // The exponent after rounding to 16 significant digits decides the notation.
    let sci = format!("{:.*e}", (PRECISION - 1) as usize, d);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..PRECISION).contains(&exp) {
        let mantissa = strip_fraction_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (PRECISION - 1 - exp).max(0) as usize;
        strip_fraction_zeros(&format!("{d:.decimals$}")).to_owned()
    }
}

fn strip_fraction_zeros(s: &str) -> &str {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
}

/// Reads a `<methodCall>`: the method name and its parameters.
pub fn decode_call(body: &[u8]) -> Result<(String, Vec<Value>), WireError> {
    let mut lx = Lexer::new(body);
    lx.expect_open("methodCall")?;
    lx.expect_open("methodName")?;
    let method = lx.text_until("methodName")?;
    let mut params = Vec::new();
    match lx.next_tag()? {
        Tok::Open(t) if t == "params" => {
            loop {
                match lx.next_tag()? {
                    Tok::Close(t) if t == "params" => break,
                    Tok::Open(t) if t == "param" => {
                        params.push(lx.value(0)?);
                        lx.expect_close("param")?;
                    }
                    other => return Err(other.unexpected("<param> or </params>")),
                }
            }
            lx.expect_close("methodCall")?;
        }
        Tok::Empty(t) if t == "params" => lx.expect_close("methodCall")?,
        Tok::Close(t) if t == "methodCall" => {}
        other => return Err(other.unexpected("<params>")),
    }
    lx.expect_eof()?;
    Ok((method, params))
}

/// Reads a `<methodResponse>`: xapi's status struct becomes `Ok(value)` or `Err(failure)`;
/// an XML-RPC fault (which xapi never sends) is a [`WireError::Fault`].
pub fn decode_response(body: &[u8]) -> Result<Result<Value, Failure>, WireError> {
    let mut lx = Lexer::new(body);
    lx.expect_open("methodResponse")?;
    let result = match lx.next_tag()? {
        Tok::Open(t) if t == "params" => {
            lx.expect_open("param")?;
            let v = lx.value(0)?;
            lx.expect_close("param")?;
            lx.expect_close("params")?;
            status_result(v)
        }
        Tok::Open(t) if t == "fault" => {
            let v = lx.value(0)?;
            lx.expect_close("fault")?;
            let field = |k: &str| v.get(k).and_then(Value::to_text).unwrap_or_default();
            Err(WireError::Fault { code: field("faultCode"), message: field("faultString") })
        }
        other => return Err(other.unexpected("<params> or <fault>")),
    };
    lx.expect_close("methodResponse")?;
    lx.expect_eof()?;
    result
}

/// Interprets xapi's `{Status, Value}` / `{Status, ErrorDescription}` struct.
pub(crate) fn status_result(v: Value) -> Result<Result<Value, Failure>, WireError> {
    let Value::Struct(mut fields) = v else {
        return Err(WireError::malformed("response is not a status struct"));
    };
    match fields.get("Status").and_then(Value::as_str) {
        Some("Success") => {
            fields.remove("Value").map(Ok).ok_or_else(|| WireError::malformed("Success response without Value"))
        }
        Some("Failure") => {
            let description = fields
                .get("ErrorDescription")
                .and_then(Value::as_array)
                .ok_or_else(|| WireError::malformed("Failure response without ErrorDescription"))?;
            Failure::from_description(description)
                .map(Err)
                .ok_or_else(|| WireError::malformed("empty or non-text ErrorDescription"))
        }
        Some(other) => Err(WireError::malformed(format!("unknown Status {other:?}"))),
        None => Err(WireError::malformed("response struct has no Status")),
    }
}

/// Reads one bare `<value>` element (for example the body of an XVA's `ova.xml`, or a task
/// result).
pub fn parse_value(xml: &str) -> Result<Value, WireError> {
    let mut lx = Lexer::new(xml.as_bytes());
    let v = lx.value(0)?;
    lx.expect_eof()?;
    Ok(v)
}

/// One token of the document, with declarations, comments and processing instructions
/// already skipped and adjacent text/CDATA merged.
#[derive(Debug)]
enum Tok {
    Open(String),
    Close(String),
    Empty(String),
    Text(String),
    Eof,
}

impl Tok {
    fn unexpected(&self, expected: &str) -> WireError {
        let found = match self {
            Tok::Open(t) => format!("<{t}>"),
            Tok::Close(t) => format!("</{t}>"),
            Tok::Empty(t) => format!("<{t}/>"),
            Tok::Text(t) => format!("text {:?}", truncate(t)),
            Tok::Eof => "end of document".to_owned(),
        };
        WireError::Xml(format!("expected {expected}, found {found}"))
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn is_blank(s: &str) -> bool {
    s.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

struct Lexer<'a> {
    reader: Reader<&'a [u8]>,
    peeked: Option<Tok>,
}

fn xml_err(e: impl std::fmt::Display) -> WireError {
    WireError::Xml(e.to_string())
}

fn tag_name(raw: &[u8]) -> Result<String, WireError> {
    std::str::from_utf8(raw).map(str::to_owned).map_err(xml_err)
}

impl<'a> Lexer<'a> {
    fn new(body: &'a [u8]) -> Self {
        Lexer { reader: Reader::from_reader(body), peeked: None }
    }

    fn raw(&mut self) -> Result<Tok, WireError> {
        loop {
            let tok = match self.reader.read_event().map_err(xml_err)? {
                Event::Start(e) => Tok::Open(tag_name(e.name().as_ref())?),
                Event::End(e) => Tok::Close(tag_name(e.name().as_ref())?),
                Event::Empty(e) => Tok::Empty(tag_name(e.name().as_ref())?),
                Event::Text(t) => Tok::Text(t.unescape().map_err(xml_err)?.into_owned()),
                Event::CData(c) => Tok::Text(tag_name(&c.into_inner())?),
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => continue,
                Event::Eof => Tok::Eof,
            };
            return Ok(tok);
        }
    }

    fn next(&mut self) -> Result<Tok, WireError> {
        let tok = match self.peeked.take() {
            Some(t) => t,
            None => self.raw()?,
        };
        let Tok::Text(mut text) = tok else {
            return Ok(tok);
        };
        loop {
            match self.raw()? {
                Tok::Text(more) => text.push_str(&more),
                other => {
                    self.peeked = Some(other);
                    return Ok(Tok::Text(text));
                }
            }
        }
    }

    /// The next markup token; blank text between elements is skipped, other text is an error.
    fn next_tag(&mut self) -> Result<Tok, WireError> {
        loop {
            match self.next()? {
                Tok::Text(t) if is_blank(&t) => continue,
                t @ Tok::Text(_) => return Err(t.unexpected("an element")),
                t => return Ok(t),
            }
        }
    }

    fn expect_open(&mut self, name: &str) -> Result<(), WireError> {
        match self.next_tag()? {
            Tok::Open(t) if t == name => Ok(()),
            other => Err(other.unexpected(&format!("<{name}>"))),
        }
    }

    fn expect_close(&mut self, name: &str) -> Result<(), WireError> {
        match self.next_tag()? {
            Tok::Close(t) if t == name => Ok(()),
            other => Err(other.unexpected(&format!("</{name}>"))),
        }
    }

    fn expect_eof(&mut self) -> Result<(), WireError> {
        match self.next_tag()? {
            Tok::Eof => Ok(()),
            other => Err(other.unexpected("end of document")),
        }
    }

    /// The text content of an element whose start tag was just read.
    fn text_until(&mut self, name: &str) -> Result<String, WireError> {
        match self.next()? {
            Tok::Close(t) if t == name => Ok(String::new()),
            Tok::Text(text) => {
                self.expect_close(name)?;
                Ok(text)
            }
            other => Err(other.unexpected(&format!("text or </{name}>"))),
        }
    }

    /// A `<value>` element, possibly empty (`<value/>` is the empty string).
    fn value(&mut self, depth: usize) -> Result<Value, WireError> {
        match self.next_tag()? {
            Tok::Open(t) if t == "value" => self.value_body(depth),
            Tok::Empty(t) if t == "value" => Ok(Value::Str(String::new())),
            other => Err(other.unexpected("<value>")),
        }
    }

    fn value_body(&mut self, depth: usize) -> Result<Value, WireError> {
        let v = match self.next()? {
            Tok::Close(t) if t == "value" => return Ok(Value::Str(String::new())),
            // Bare text is a string, as xapi writes strings and int64s.
            Tok::Text(text) => match self.next()? {
                Tok::Close(t) if t == "value" => return Ok(Value::Str(text)),
                Tok::Open(tag) if is_blank(&text) => self.typed(&tag, depth)?,
                Tok::Empty(tag) if is_blank(&text) => empty_typed(&tag)?,
                other => return Err(other.unexpected("</value>")),
            },
            Tok::Open(tag) => self.typed(&tag, depth)?,
            Tok::Empty(tag) => empty_typed(&tag)?,
            other => return Err(other.unexpected("a value")),
        };
        self.expect_close("value")?;
        Ok(v)
    }

    /// The content of a typed element (`<int>`, `<array>`...) whose start tag was just read.
    fn typed(&mut self, tag: &str, depth: usize) -> Result<Value, WireError> {
        let v = match tag {
            "string" => Value::Str(self.text_until(tag)?),
            "int" | "i4" | "i8" => {
                let text = self.text_until(tag)?;
                let i = text
                    .trim()
                    .parse()
                    .map_err(|_| WireError::malformed(format!("bad integer {:?}", truncate(&text))))?;
                Value::Int(i)
            }
            "boolean" => match self.text_until(tag)?.trim() {
                "1" => Value::Bool(true),
                "0" => Value::Bool(false),
                other => {
                    return Err(WireError::malformed(format!("bad boolean {:?}", truncate(other))));
                }
            },
            "double" => {
                let text = self.text_until(tag)?;
                let d = text
                    .trim()
                    .parse()
                    .map_err(|_| WireError::malformed(format!("bad double {:?}", truncate(&text))))?;
                Value::Double(d)
            }
            "dateTime.iso8601" => Value::DateTime(self.text_until(tag)?),
            "array" => {
                let items = self.array_data(depth + 1)?;
                self.expect_close("array")?;
                Value::Array(items)
            }
            "struct" => Value::Struct(self.struct_members(depth + 1)?),
            other => {
                return Err(WireError::malformed(format!("unsupported XML-RPC type <{}>", truncate(other))));
            }
        };
        Ok(v)
    }

    fn array_data(&mut self, depth: usize) -> Result<Vec<Value>, WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep(MAX_DEPTH));
        }
        match self.next_tag()? {
            Tok::Open(t) if t == "data" => {}
            Tok::Empty(t) if t == "data" => return Ok(Vec::new()),
            other => return Err(other.unexpected("<data>")),
        }
        let mut items = Vec::new();
        loop {
            match self.next_tag()? {
                Tok::Close(t) if t == "data" => return Ok(items),
                Tok::Open(t) if t == "value" => items.push(self.value_body(depth)?),
                Tok::Empty(t) if t == "value" => items.push(Value::Str(String::new())),
                other => return Err(other.unexpected("<value> or </data>")),
            }
        }
    }

    fn struct_members(&mut self, depth: usize) -> Result<BTreeMap<String, Value>, WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep(MAX_DEPTH));
        }
        let mut members = BTreeMap::new();
        loop {
            match self.next_tag()? {
                Tok::Close(t) if t == "struct" => return Ok(members),
                Tok::Open(t) if t == "member" => {
                    let name = match self.next_tag()? {
                        Tok::Open(t) if t == "name" => self.text_until("name")?,
                        Tok::Empty(t) if t == "name" => String::new(),
                        other => return Err(other.unexpected("<name>")),
                    };
                    let value = self.value(depth)?;
                    self.expect_close("member")?;
                    members.insert(name, value);
                }
                other => return Err(other.unexpected("<member> or </struct>")),
            }
        }
    }
}

/// A self-closed typed element, as xapi's parser accepts them.
fn empty_typed(tag: &str) -> Result<Value, WireError> {
    match tag {
        "string" => Ok(Value::Str(String::new())),
        "array" => Ok(Value::Array(Vec::new())),
        "struct" => Ok(Value::Struct(BTreeMap::new())),
        other => Err(WireError::malformed(format!("empty <{}/> has no value", truncate(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    fn record() -> Value {
        let mut m = BTreeMap::new();
        m.insert("uuid".into(), s("d3e1c1a2-0000-4000-8000-000000000001"));
        m.insert("virtual_size".into(), Value::Int(10_737_418_240));
        m.insert("is_a_snapshot".into(), Value::Bool(false));
        m.insert("tags".into(), Value::Array(vec![]));
        m.insert("other_config".into(), Value::Struct(BTreeMap::new()));
        m.insert("snapshot_time".into(), Value::DateTime("19700101T00:00:00Z".into()));
        m.insert("memory_overhead".into(), Value::Double(0.5));
        m.insert("name_label".into(), s("a <b> & \"c\"\u{1}"));
        Value::Struct(m)
    }

    #[test]
    fn golden_success_response() {
        let xml = encode_response(&Ok(s("OpaqueRef:abc")));
        assert_eq!(
            xml,
            "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>\
             <member><name>Status</name><value>Success</value></member>\
             <member><name>Value</name><value>OpaqueRef:abc</value></member>\
             </struct></value></param></params></methodResponse>"
        );
    }

    #[test]
    fn golden_failure_response() {
        let f = Failure::new("HANDLE_INVALID", vec!["VM".into(), "OpaqueRef:x".into()]);
        assert_eq!(
            encode_response(&Err(f)),
            "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>\
             <member><name>Status</name><value>Failure</value></member>\
             <member><name>ErrorDescription</name><value><array><data>\
             <value>HANDLE_INVALID</value><value>VM</value><value>OpaqueRef:x</value>\
             </data></array></value></member></struct></value></param></params></methodResponse>"
        );
    }

    #[test]
    fn golden_values() {
        let cases = [
            (Value::Int(-42), "<value>-42</value>"),
            (Value::Bool(true), "<value><boolean>1</boolean></value>"),
            (Value::Bool(false), "<value><boolean>0</boolean></value>"),
            (Value::Double(0.1), "<value><double>0.1</double></value>"),
            (Value::Double(1326211200.5), "<value><double>1326211200.5</double></value>"),
            (Value::Double(1e20), "<value><double>1e+20</double></value>"),
            (Value::Double(1.5e-7), "<value><double>1.5e-07</double></value>"),
            (Value::Double(0.0), "<value><double>0</double></value>"),
            (
                Value::DateTime("20261123T08:37:12Z".into()),
                "<value><dateTime.iso8601>20261123T08:37:12Z</dateTime.iso8601></value>",
            ),
            (Value::Array(vec![]), "<value><array><data></data></array></value>"),
            (Value::Struct(BTreeMap::new()), "<value><struct></struct></value>"),
            (s("a<&>\"\u{7}\tz"), "<value>a&lt;&amp;&gt;&quot;\tz</value>"),
        ];
        for (v, want) in cases {
            let mut out = String::new();
            write_value(&v, &mut out);
            assert_eq!(out, want, "{v:?}");
        }
    }

    #[test]
    fn golden_call() {
        assert_eq!(
            encode_call("session.login_with_password", &[s("root"), s("pw")]),
            "<?xml version=\"1.0\"?><methodCall><methodName>session.login_with_password\
             </methodName><params><param><value>root</value></param><param><value>pw</value>\
             </param></params></methodCall>"
        );
    }

    #[test]
    fn round_trips() {
        let params = vec![s("OpaqueRef:1"), record(), Value::Array(vec![record(), s("")])];
        let xml = encode_call("VM.get_record", &params);
        let (method, back) = decode_call(xml.as_bytes()).expect("decodes");
        assert_eq!(method, "VM.get_record");
        // Int travels as bare text; the control character is dropped by the encoder.
        let mut expected = record();
        if let Value::Struct(m) = &mut expected {
            m.insert("virtual_size".into(), s("10737418240"));
            m.insert("name_label".into(), s("a <b> & \"c\""));
        }
        assert_eq!(back[1], expected);
        assert_eq!(back[2].as_array().map(<[Value]>::len), Some(2));

        let ok = decode_response(encode_response(&Ok(record())).as_bytes()).expect("decodes");
        assert_eq!(ok, Ok(expected));
        let f = Failure::new("SESSION_INVALID", vec!["OpaqueRef:s".into()]);
        let back = decode_response(encode_response(&Err(f.clone())).as_bytes()).expect("decodes");
        assert_eq!(back, Err(f));
    }

    #[test]
    fn reads_python_typed_values() {
        // What Python's xmlrpc.client sends, pretty-printed with newlines.
        let body = b"<?xml version='1.0'?>\n<methodCall>\n<methodName>sim.write</methodName>\n\
<params>\n<param>\n<value><string>OpaqueRef:s</string></value>\n</param>\n\
<param>\n<value><int>7</int></value>\n</param>\n<param>\n<value><i8>-9000000000</i8></value>\n</param>\n\
<param>\n<value><boolean>1</boolean></value>\n</param>\n<param>\n<value><double>2.5</double></value>\n</param>\n\
<param>\n<value><array><data>\n<value><string>a</string></value>\n</data></array></value>\n</param>\n\
<param>\n<value><struct>\n<member>\n<name>k</name>\n<value><string>v</string></value>\n</member>\n</struct></value>\n</param>\n\
<param>\n<value><string></string></value>\n</param>\n<param>\n<value><string/></value>\n</param>\n\
</params>\n</methodCall>\n";
        let (method, params) = decode_call(body).expect("decodes");
        assert_eq!(method, "sim.write");
        let mut m = BTreeMap::new();
        m.insert("k".to_owned(), s("v"));
        assert_eq!(
            params,
            vec![
                s("OpaqueRef:s"),
                Value::Int(7),
                Value::Int(-9_000_000_000),
                Value::Bool(true),
                Value::Double(2.5),
                Value::Array(vec![s("a")]),
                Value::Struct(m),
                s(""),
                s(""),
            ]
        );
    }

    #[test]
    fn whitespace_only_value_is_a_string() {
        assert_eq!(parse_value("<value>  </value>"), Ok(s("  ")));
        assert_eq!(parse_value("<value/>"), Ok(s("")));
        assert_eq!(parse_value("<value> <array><data/></array> </value>"), Ok(Value::Array(vec![])));
        assert_eq!(parse_value("<value>a&amp;<![CDATA[<b>]]></value>"), Ok(s("a&<b>")));
    }

    #[test]
    fn void_result_is_empty_string() {
        let xml = encode_response(&Ok(s("")));
        assert!(xml.contains("<name>Value</name><value></value>"));
        assert_eq!(decode_response(xml.as_bytes()), Ok(Ok(s(""))));
    }

    #[test]
    fn fault_is_a_wire_error() {
        let body = b"<methodResponse><fault><value><struct><member><name>faultCode</name>\
<value><int>1</int></value></member><member><name>faultString</name><value>boom</value>\
</member></struct></value></fault></methodResponse>";
        assert_eq!(decode_response(body), Err(WireError::Fault { code: "1".into(), message: "boom".into() }));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let bad: &[&[u8]] = &[
            b"",
            b"<methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><boolean>2</boolean></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><nil/></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value>a</valu></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName></methodCall>trailing",
            b"<methodCall><methodName>\xff</methodName></methodCall>",
            b"<methodResponse><params><param><value>x</value></param></params></methodResponse>",
            b"<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data/></array></value></member></struct></value></param></params></methodResponse>",
            b"<methodResponse><params><param><value><struct></struct></value></param></params></methodResponse>",
        ];
        for body in bad {
            assert!(decode_call(body).is_err() && decode_response(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowing() {
        let depth = 100_000;
        let xml = format!(
            "<value>{}{}</value>",
            "<array><data><value>".repeat(depth),
            "</value></data></array>".repeat(depth)
        );
        assert_eq!(parse_value(&xml), Err(WireError::TooDeep(MAX_DEPTH)));
    }
}
