//! See `xenvault_fuzzing::fsread::disk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenvault_fuzzing::fsread::disk(data));
