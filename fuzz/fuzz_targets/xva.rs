//! See `xenvault_fuzzing::formats::xva`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenvault_fuzzing::formats::xva(data));
