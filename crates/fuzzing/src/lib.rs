//! What each fuzz target does with its input, in one place: `fuzz/fuzz_targets/*.rs` are
//! one-line wrappers around these functions, and `tests/corpus.rs` replays every corpus
//! file (and cheap mutations of them) through the same functions in a plain `cargo test`,
//! so an input the fuzzer once crashed on stays a regression test without libFuzzer.
//!
//! Every function must return normally for any input: a panic, an allocation bomb or an
//! endless loop is a bug in the parser, never in the input.

pub mod formats;
pub mod fsread;
pub mod repo;

/// A fuzz target: its name (the folder under `fuzz/corpus/`) and its entry function.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target, in the order `fuzz/run-long.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target { name: "xmlrpc", run: formats::xmlrpc },
    Target { name: "jsonrpc", run: formats::jsonrpc },
    Target { name: "vhd", run: formats::vhd },
    Target { name: "xva", run: formats::xva },
    Target { name: "nbd", run: formats::nbd },
    Target { name: "repo_pack", run: repo::pack },
    Target { name: "repo_manifest", run: repo::manifest },
    Target { name: "repo_keys", run: repo::keys },
    Target { name: "fs_disk", run: fsread::disk },
    Target { name: "fs_volume", run: fsread::volume },
];
