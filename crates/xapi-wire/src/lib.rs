//! XenAPI values and their two wire encodings (XML-RPC at `/`, JSON-RPC at `/jsonrpc`),
//! for both sides of the wire: the client encodes calls and decodes answers, the
//! simulator decodes calls and encodes answers. No I/O here.

use std::collections::BTreeMap;
use std::fmt;

pub mod cbt;
pub mod jsonrpc;
pub mod xmlrpc;

/// One XenAPI value as it travels. xapi's XML-RPC sends int64 as bare strings, so a
/// reader of a typed field must accept `Str` where it expects `Int` (see [`Value::as_i64`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// `dateTime.iso8601` text, kept as xapi wrote it (e.g. `20261123T08:37:12Z`).
    DateTime(String),
    Array(Vec<Value>),
    Struct(BTreeMap<String, Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::DateTime(s) => Some(s),
            _ => None,
        }
    }

    /// An int64, whether it came as a JSON number or as XML-RPC's decimal string.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A float, whether it came as a double, an int or decimal text.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            Value::Int(i) => Some(*i as f64),
            Value::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" => Some(true),
            Value::Str(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_struct(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Struct(m) => Some(m),
            _ => None,
        }
    }

    /// The text of a scalar (what XML-RPC would carry between `<value>` tags).
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Str(s) | Value::DateTime(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Double(d) => Some(d.to_string()),
            Value::Array(_) | Value::Struct(_) => None,
        }
    }

    /// A field of a struct value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_struct()?.get(key)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Double(f)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}
impl From<BTreeMap<String, Value>> for Value {
    fn from(m: BTreeMap<String, Value>) -> Self {
        Value::Struct(m)
    }
}

/// A XenAPI error as xapi reports it: `ErrorDescription = [code, params...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub params: Vec<String>,
}

impl Failure {
    pub fn new(code: impl Into<String>, params: Vec<String>) -> Self {
        Failure { code: code.into(), params }
    }

    /// Builds a failure from an `ErrorDescription` array; scalars that are not strings are
    /// turned into their text, since some servers send numbers as parameters.
    pub fn from_description(items: &[Value]) -> Option<Failure> {
        let (code, params) = items.split_first()?;
        Some(Failure {
            code: code.to_text()?,
            params: params.iter().map(|p| p.to_text().unwrap_or_default()).collect(),
        })
    }

    /// The `ErrorDescription` array: code first, then the parameters.
    pub fn to_description(&self) -> Vec<Value> {
        std::iter::once(&self.code).chain(&self.params).map(|s| Value::Str(s.clone())).collect()
    }

    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)?;
        if !self.params.is_empty() {
            write!(f, " [{}]", self.params.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Failure codes a backup product meets (names as in xapi's `Api_errors`).
pub mod codes {
    pub const SESSION_INVALID: &str = "SESSION_INVALID";
    pub const SESSION_AUTHENTICATION_FAILED: &str = "SESSION_AUTHENTICATION_FAILED";
    pub const MESSAGE_METHOD_UNKNOWN: &str = "MESSAGE_METHOD_UNKNOWN";
    pub const MESSAGE_PARAMETER_COUNT_MISMATCH: &str = "MESSAGE_PARAMETER_COUNT_MISMATCH";
    pub const HANDLE_INVALID: &str = "HANDLE_INVALID";
    pub const UUID_INVALID: &str = "UUID_INVALID";
    pub const VM_BAD_POWER_STATE: &str = "VM_BAD_POWER_STATE";
    pub const VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED: &str = "VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED";
    pub const VM_SNAPSHOT_WITH_QUIESCE_FAILED: &str = "VM_SNAPSHOT_WITH_QUIESCE_FAILED";
    pub const VDI_NO_CBT_METADATA: &str = "VDI_NO_CBT_METADATA";
    pub const VDI_CBT_ENABLED: &str = "VDI_CBT_ENABLED";
    pub const VDI_IN_USE: &str = "VDI_IN_USE";
    pub const VDI_MISSING: &str = "VDI_MISSING";
    pub const VDI_TOO_LARGE: &str = "VDI_TOO_LARGE";
    pub const VDI_INCOMPATIBLE_TYPE: &str = "VDI_INCOMPATIBLE_TYPE";
    pub const SR_OPERATION_NOT_SUPPORTED: &str = "SR_OPERATION_NOT_SUPPORTED";
    pub const SR_FULL: &str = "SR_FULL";
    pub const OPERATION_NOT_ALLOWED: &str = "OPERATION_NOT_ALLOWED";
    pub const OTHER_OPERATION_IN_PROGRESS: &str = "OTHER_OPERATION_IN_PROGRESS";
    pub const TASK_CANCELLED: &str = "TASK_CANCELLED";
    pub const HOST_IS_SLAVE: &str = "HOST_IS_SLAVE";
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    pub const RBAC_PERMISSION_DENIED: &str = "RBAC_PERMISSION_DENIED";
    pub const MAP_DUPLICATE_KEY: &str = "MAP_DUPLICATE_KEY";
    pub const FIELD_TYPE_ERROR: &str = "FIELD_TYPE_ERROR";
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
    pub const IMPORT_ERROR: &str = "IMPORT_ERROR";
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
}
pub use codes::*;

/// Input that is not a well-formed XenAPI message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("values nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("XML-RPC fault {code}: {message}")]
    Fault { code: String, message: String },
    #[error("invalid base64: {0}")]
    Base64(String),
}

impl WireError {
    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        WireError::Malformed(msg.into())
    }
}

/// Deepest nesting of arrays/structs accepted from the wire; bounds recursion on hostile input.
pub const MAX_DEPTH: usize = 64;
