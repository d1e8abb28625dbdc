//! Exit codes scripts can rely on. clap itself exits 2 on a usage error.

use std::process::ExitCode;

/// The command failed (any error not classified below).
pub const FAILURE: u8 = 1;
/// `verify` (or a check) ran to the end and found damage or problems.
pub const DAMAGE_FOUND: u8 = 3;
/// Some items of a multi-item job (VMs, disks) failed while others succeeded.
pub const PARTIAL: u8 = 4;
/// Wrong passphrase or key, or credentials refused.
pub const AUTH: u8 = 5;

/// Maps an error to an exit code: an area returns an [`ExitKind`] as the error (or
/// wraps one with `.context(...)`) when a failure needs a code of its own. Outcomes that
/// are not errors (damage found, partial success) return their code directly.
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    let code = match error.downcast_ref::<ExitKind>() {
        Some(ExitKind::Auth) => AUTH,
        None => FAILURE,
    };
    ExitCode::from(code)
}

#[derive(Debug, thiserror::Error)]
pub enum ExitKind {
    #[error("authentication failed")]
    Auth,
}
