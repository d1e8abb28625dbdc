//! LVM2 physical volumes: label, metadata area and the text metadata, mapped to the linear
//! logical volumes that live on this PV.

use crate::Error;
use crate::source::{Mapped, ReadAt, read_vec};
use std::sync::Arc;

/// A logical volume found on the PV, ready to read (or why it cannot be).
pub(crate) struct LogicalVolume {
    pub vg: String,
    pub name: String,
    pub size: u64,
    pub source: Result<Arc<dyn ReadAt>, String>,
}

/// LVM2's CRC: CRC-32 without the final inversion, seeded 0xf597a6cf.
fn lvm_crc(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!0xf597_a6cf);
    h.update(data);
    !h.finalize()
}

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corrupt { what: "LVM2 physical volume", detail: detail.into() }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Sector (0..4) holding the LVM2 label, if any.
pub(crate) fn label_sector(head: &[u8]) -> Option<usize> {
    (0..4).find(|s| {
        let at = s * 512;
        head.get(at..at + 8) == Some(b"LABELONE") && head.get(at + 24..at + 32) == Some(b"LVM2 001")
    })
}

/// The LVs of the VG on this PV. Segments on other PVs (a VG spanning disks) read as zeros
/// are not supported: such LVs report why.
pub(crate) fn logical_volumes(pv: Arc<dyn ReadAt>) -> Result<Vec<LogicalVolume>, Error> {
    let head = read_vec(&*pv, 0, 2048)?;
    let sector = label_sector(&head).ok_or_else(|| corrupt("no LABELONE label"))?;
    let label = &head[sector * 512..sector * 512 + 512];
    if u32_at(label, 16) != Some(lvm_crc(&label[20..])) {
        return Err(corrupt("label checksum mismatch"));
    }
    let pv_off = u32_at(label, 20).unwrap_or(32) as usize;
    let pv_header = label.get(pv_off..).ok_or_else(|| corrupt("bad PV header offset"))?;
    let pv_uuid = String::from_utf8_lossy(pv_header.get(..32).unwrap_or_default()).into_owned();
    // Two zero-terminated lists of (offset, size): data areas, then metadata areas.
    let mut at = 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [vec![], vec![]];
    for list in &mut lists {
        loop {
            let (Some(off), Some(size)) = (u64_at(pv_header, at), u64_at(pv_header, at + 8)) else {
                return Err(corrupt("PV header area list runs off the label sector"));
            };
            at += 16;
            if off == 0 {
                break;
            }
            list.push((off, size));
        }
    }
    let &(mda_start, _) = lists[1].first().ok_or_else(|| corrupt("no metadata area"))?;
    let mda = read_vec(&*pv, mda_start, 512)?;
    if mda.get(4..20) != Some(b" LVM2 x[5A%r0N*>") {
        return Err(corrupt("bad metadata area magic"));
    }
    if u32_at(&mda, 0) != Some(lvm_crc(&mda[4..])) {
        return Err(corrupt("metadata area header checksum mismatch"));
    }
    let (Some(text_off), Some(text_len), Some(text_crc)) = (u64_at(&mda, 40), u64_at(&mda, 48), u32_at(&mda, 56))
    else {
        return Err(corrupt("no metadata location"));
    };
    let mda_size = u64_at(&mda, 32).unwrap_or(0);
    if text_len == 0 || text_len > 64 << 20 || text_off + text_len > mda_size {
        return Err(corrupt(format!("metadata text of {text_len} bytes at {text_off} does not fit its area")));
    }
    // The text may wrap around the end of the circular buffer.
    let first = text_len.min(mda_size - text_off);
    let mut text = read_vec(&*pv, mda_start + text_off, first as usize)?;
    text.extend(read_vec(&*pv, mda_start + 512, (text_len - first) as usize)?);
    if lvm_crc(&text) != text_crc {
        return Err(corrupt("metadata text checksum mismatch"));
    }
    let text = String::from_utf8_lossy(&text);
    let root = parse(&text).map_err(|e| corrupt(format!("metadata text: {e}")))?;
    build(pv, &pv_uuid, &root)
}

fn build(pv: Arc<dyn ReadAt>, pv_uuid: &str, root: &[(String, Value)]) -> Result<Vec<LogicalVolume>, Error> {
    let (vg, vg_body) = root
        .iter()
        .find_map(|(k, v)| match v {
            Value::Section(body) if get(body, "physical_volumes").is_some() => Some((k.clone(), body)),
            _ => None,
        })
        .ok_or_else(|| corrupt("metadata has no volume group"))?;
    let sector = 512u64;
    let extent = int(vg_body, "extent_size").ok_or_else(|| corrupt("no extent_size"))? as u64 * sector;
    // This PV's name in the VG (pv0, ...) and where its extents start.
    let Some(Value::Section(pvs)) = get(vg_body, "physical_volumes") else {
        return Err(corrupt("no physical_volumes"));
    };
    let (pv_name, pe_start) = pvs
        .iter()
        .find_map(|(name, v)| match v {
            Value::Section(b) if str_of(b, "id").map(|id| id.replace('-', "")) == Some(pv_uuid.to_string()) => {
                Some((name.clone(), int(b, "pe_start").unwrap_or(0) as u64 * sector))
            }
            _ => None,
        })
        .ok_or_else(|| corrupt("this PV is not listed in the VG metadata"))?;
    let Some(Value::Section(lvs)) = get(vg_body, "logical_volumes") else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for (name, v) in lvs {
        let Value::Section(lv) = v else { continue };
        let visible = matches!(get(lv, "status"), Some(Value::List(s)) if s.iter().any(|x| matches!(x, Value::Str(s) if s == "VISIBLE")));
        if !visible {
            continue;
        }
        let mut segments = Vec::new();
        let mut problem = None;
        let mut size = 0;
        for (key, seg) in lv {
            let Value::Section(seg) = seg else { continue };
            if !key.starts_with("segment") {
                continue;
            }
            let start = int(seg, "start_extent").unwrap_or(0) as u64 * extent;
            let len = int(seg, "extent_count").unwrap_or(0) as u64 * extent;
            size = size.max(start + len);
            let stripes = match get(seg, "stripes") {
                Some(Value::List(l)) => l.as_slice(),
                _ => &[],
            };
            match (str_of(seg, "type"), int(seg, "stripe_count"), stripes) {
                (Some("striped"), Some(1), [Value::Str(on), Value::Int(pe)]) if *on == pv_name => {
                    segments.push((start, pe_start + *pe as u64 * extent, len));
                }
                (Some("striped"), Some(1), _) => problem = Some("a segment lives on another PV".to_string()),
                (ty, count, _) => {
                    problem = Some(format!("unsupported segment type {ty:?} with {count:?} stripes"));
                }
            }
        }
        let source = match problem {
            Some(p) => Err(p),
            None => Ok(Arc::new(Mapped::new(pv.clone(), segments, size)) as Arc<dyn ReadAt>),
        };
        out.push(LogicalVolume { vg: vg.clone(), name: name.clone(), size, source });
    }
    Ok(out)
}

/// A value in LVM2's text metadata format.
#[derive(Debug, PartialEq)]
enum Value {
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Section(Vec<(String, Value)>),
}

fn get<'a>(body: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    body.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn int(body: &[(String, Value)], key: &str) -> Option<i64> {
    match get(body, key)? {
        Value::Int(i) if *i >= 0 => Some(*i),
        _ => None,
    }
}

fn str_of<'a>(body: &'a [(String, Value)], key: &str) -> Option<&'a str> {
    match get(body, key)? {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next().is_some_and(|c| c != '\n') {},
            '{' | '}' | '[' | ']' | '=' | ',' => {
                chars.next();
                out.push(Token::Punct(c));
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => s.extend(chars.next()),
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Token::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "{}[]=,\"#".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

fn parse(text: &str) -> Result<Vec<(String, Value)>, String> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let body = parse_body(&tokens, &mut pos, 0)?;
    if pos != tokens.len() {
        return Err("unexpected `}`".into());
    }
    Ok(body)
}

fn parse_body(t: &[Token], pos: &mut usize, depth: usize) -> Result<Vec<(String, Value)>, String> {
    if depth > 32 {
        return Err("sections nested too deeply".into());
    }
    let mut body = Vec::new();
    while let Some(Token::Word(key)) = t.get(*pos) {
        *pos += 1;
        match t.get(*pos) {
            Some(Token::Punct('{')) => {
                *pos += 1;
                let inner = parse_body(t, pos, depth + 1)?;
                if t.get(*pos) != Some(&Token::Punct('}')) {
                    return Err(format!("section {key} is not closed"));
                }
                *pos += 1;
                body.push((key.clone(), Value::Section(inner)));
            }
            Some(Token::Punct('=')) => {
                *pos += 1;
                body.push((key.clone(), parse_value(t, pos)?));
            }
            _ => return Err(format!("expected `=` or `{{` after {key}")),
        }
    }
    Ok(body)
}

fn parse_value(t: &[Token], pos: &mut usize) -> Result<Value, String> {
    let token = t.get(*pos).ok_or("value missing at end")?;
    *pos += 1;
    match token {
        Token::Str(s) => Ok(Value::Str(s.clone())),
        Token::Word(w) => w.parse().map(Value::Int).map_err(|_| format!("bad number {w:?}")),
        Token::Punct('[') => {
            let mut items = Vec::new();
            loop {
                match t.get(*pos) {
                    Some(Token::Punct(']')) => {
                        *pos += 1;
                        return Ok(Value::List(items));
                    }
                    Some(Token::Punct(',')) => *pos += 1,
                    Some(Token::Punct(c)) => return Err(format!("unexpected `{c}` in list")),
                    Some(_) => items.push(parse_value(t, pos)?),
                    None => return Err("list is not closed".into()),
                }
            }
        }
        Token::Punct(c) => Err(format!("unexpected `{c}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_text() {
        let root = parse("vg {\nid = \"a\\\"b\"\nn = 3 # c\nl = [\"x\", 1]\ns {\n}\n}\nversion = 1\n").unwrap();
        let Value::Section(vg) = &root[0].1 else { panic!() };
        assert_eq!(str_of(vg, "id"), Some("a\"b"));
        assert_eq!(int(vg, "n"), Some(3));
        assert_eq!(get(vg, "l"), Some(&Value::List(vec![Value::Str("x".into()), Value::Int(1)])));
        assert!(parse("vg { a = [1, ").is_err());
        assert!(parse("vg { a = }").is_err());
        assert!(parse(&"a {".repeat(100)).is_err());
    }

    #[test]
    fn crc_matches_lvm() {
        // The seed itself is the CRC of nothing.
        assert_eq!(lvm_crc(b""), 0xf597_a6cf);
    }
}
