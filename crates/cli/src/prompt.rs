//! Questions asked on a terminal. Without one (cron, scripts) nothing is asked: the
//! caller needs an explicit flag instead, and says which.

use anyhow::{Context, Result};
use std::io::{BufRead, IsTerminal, Write};

use crate::exit::ExitKind;

/// Whether a person can answer: stdin and stderr are both terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn ask(question: &str) -> Result<String> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the answer")?;
    Ok(line.trim().to_owned())
}

/// A yes/no question; only "y" or "yes" is yes.
pub fn yes_no(question: &str) -> Result<bool> {
    Ok(matches!(ask(&format!("{question} [y/N] "))?.to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// A secret typed without echo.
pub fn secret(question: &str) -> Result<String> {
    rpassword::prompt_password(question).context("reading from the terminal")
}

/// Confirms a destructive step: on a terminal the user types `name`; otherwise `yes`
/// (the `--yes` flag) must be given. Refusals are usage errors (exit 2).
pub fn confirm_by_name(what: &str, name: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !interactive() {
        return Err(anyhow::anyhow!("{what}: add --yes to confirm (no terminal to ask on)").context(ExitKind::Usage));
    }
    eprintln!("{what}.");
    if ask(&format!("type {name:?} to go on: "))? == name {
        Ok(())
    } else {
        Err(anyhow::anyhow!("not confirmed: nothing was changed").context(ExitKind::Usage))
    }
}
