//! XenAPI failures as the simulator raises them: an error code and its string
//! parameters, exactly as they appear in `ErrorDescription`.

use std::fmt;

/// A XenAPI failure (`ErrorDescription = [code, params...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub params: Vec<String>,
}

impl ApiError {
    pub fn new(code: &str, params: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ApiError { code: code.to_owned(), params: params.into_iter().map(Into::into).collect() }
    }

    pub fn handle_invalid(class: &str, reference: &str) -> Self {
        Self::new("HANDLE_INVALID", [class, reference])
    }

    pub fn session_invalid(reference: &str) -> Self {
        Self::new("SESSION_INVALID", [reference])
    }

    pub fn method_unknown(method: &str) -> Self {
        Self::new("MESSAGE_METHOD_UNKNOWN", [method])
    }

    pub fn parameter_count(method: &str, expected: usize, got: usize) -> Self {
        Self::new("MESSAGE_PARAMETER_COUNT_MISMATCH", [method.to_owned(), expected.to_string(), got.to_string()])
    }

    /// A value of the wrong type for a parameter (xapi: `FIELD_TYPE_ERROR [param]`).
    pub fn field_type(name: &str) -> Self {
        Self::new("FIELD_TYPE_ERROR", [name])
    }

    pub fn internal(msg: impl fmt::Display) -> Self {
        Self::new("INTERNAL_ERROR", [msg.to_string()])
    }

    pub fn bad_power_state(vm: &str, expected: &str, actual: &str) -> Self {
        Self::new("VM_BAD_POWER_STATE", [vm, expected, actual])
    }

    pub fn operation_not_allowed(reason: impl Into<String>) -> Self {
        Self::new("OPERATION_NOT_ALLOWED", [reason.into()])
    }

    /// How SMAPIv1 backend errors reach clients: `SR_BACKEND_FAILURE_<n>`, "", text, "".
    pub fn sr_backend(code: u32, text: &str, opterr: &str) -> Self {
        Self::new(
            &format!("SR_BACKEND_FAILURE_{code}"),
            [String::new(), format!("{text} [opterr={opterr}]"), String::new()],
        )
    }

    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.code.clone()).chain(self.params.iter().cloned()).collect()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.all().join(" "))
    }
}

impl std::error::Error for ApiError {}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(format!("storage: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
