//! Exit codes scripts can rely on. clap itself exits 2 on a usage error.

use std::process::ExitCode;

/// The command failed (any error not classified below).
pub const FAILURE: u8 = 1;
/// Bad or missing arguments, an unconfirmed destructive step (clap uses it too).
pub const USAGE: u8 = 2;
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
        Some(ExitKind::Usage) => USAGE,
        None => FAILURE,
    };
    ExitCode::from(code)
}

/// The error's messages from the outside in, each said once: a layer whose message
/// already quotes its cause's (`XenAPI: {0}`) is not followed by that cause again.
pub fn chain_text(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        // A chain link is anyhow's wrapper, not the ExitKind itself: recognise it by its text.
        let exit_kind = [ExitKind::Auth, ExitKind::Usage].iter().any(|k| k.to_string() == text);
        if exit_kind || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

#[derive(Debug, thiserror::Error)]
pub enum ExitKind {
    #[error("authentication failed")]
    Auth,
    #[error("usage")]
    Usage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_says_each_message_once_and_keeps_the_code() {
        let inner = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(inner)
            .context("XenAPI: connection refused")
            .context("logging in to pool lab")
            .context(ExitKind::Auth);
        assert_eq!(chain_text(&e), "logging in to pool lab: XenAPI: connection refused");
        assert_eq!(code_for(&e), ExitCode::from(AUTH));
    }
}
