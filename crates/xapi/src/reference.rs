use std::fmt;

use xenvault_xapi_wire::Value;

use crate::Error;

/// An object reference as xapi hands them out: `OpaqueRef:<uuid>`, or `OpaqueRef:NULL`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ref(String);

impl Ref {
    pub const NULL_STR: &'static str = "OpaqueRef:NULL";

    pub fn new(s: impl Into<String>) -> Self {
        Ref(s.into())
    }

    pub fn null() -> Self {
        Ref(Self::NULL_STR.to_owned())
    }

    /// The null reference; an empty string also means "none" in some fields.
    pub fn is_null(&self) -> bool {
        self.0 == Self::NULL_STR || self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A reference held in a value (refs always travel as strings).
    pub fn from_value(v: &Value) -> Result<Ref, Error> {
        match v {
            Value::Str(s) => Ok(Ref(s.clone())),
            other => Err(Error::malformed(format!("expected a reference, got {other:?}"))),
        }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Ref> for Value {
    fn from(r: Ref) -> Value {
        Value::Str(r.0)
    }
}

impl From<&Ref> for Value {
    fn from(r: &Ref) -> Value {
        Value::Str(r.0.clone())
    }
}

impl AsRef<str> for Ref {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
