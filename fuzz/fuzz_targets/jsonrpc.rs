//! See `xenvault_fuzzing::formats::jsonrpc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenvault_fuzzing::formats::jsonrpc(data));
