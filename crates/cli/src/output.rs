//! Human output: aligned tables and times in the reader's zone (`--utc` for UTC).
//! JSON output keeps UTC always.

use chrono::{DateTime, Local, Utc};
use std::sync::atomic::{AtomicBool, Ordering};

static UTC: AtomicBool = AtomicBool::new(false);

/// Shows times in UTC instead of the local zone (the global `--utc`).
pub fn use_utc(utc: bool) {
    UTC.store(utc, Ordering::Relaxed);
}

/// `2026-01-31 14:05:09` in the local zone, or with ` UTC` under `--utc`.
pub fn time(t: DateTime<Utc>) -> String {
    if UTC.load(Ordering::Relaxed) {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    } else {
        t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// Writes lines to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn lines(lines: impl IntoIterator<Item = String>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}

/// Prints rows under a header, every column as wide as its widest cell; the columns
/// listed in `right` (numbers, sizes) align right. The last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match (right.contains(&i), i == last) {
                (true, _) => format!("{c:>w$}", w = widths[i]),
                (false, true) => (*c).to_owned(),
                (false, false) => format!("{c:<w$}", w = widths[i]),
            })
            .collect();
        text.join("  ").trim_end().to_owned()
    };
    lines(
        std::iter::once(line(header.to_vec()))
            .chain(rows.iter().map(|row| line(row.iter().map(String::as_str).collect()))),
    );
}
