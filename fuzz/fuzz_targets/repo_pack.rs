//! See `xenvault_fuzzing::repo::pack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenvault_fuzzing::repo::pack(data));
