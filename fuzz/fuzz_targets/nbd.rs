//! See `xenvault_fuzzing::formats::nbd`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenvault_fuzzing::formats::nbd(data));
