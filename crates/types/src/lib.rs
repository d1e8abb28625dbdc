//! Types shared by the libraries and their front ends (CLI, service, web UI), in the manner
//! of PBS's `pbs-api-types`: plain serde data and small helpers, no I/O. Every crate may
//! depend on this one; it depends on no other xenvault crate.

pub mod metadata;
pub mod progress;
pub mod ranges;
pub mod units;
