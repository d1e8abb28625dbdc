//! See `xenvault_fuzzing::fsread::volume`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenvault_fuzzing::fsread::volume(data));
