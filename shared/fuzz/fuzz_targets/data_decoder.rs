//! Fuzz target: qdl_shared::fuzzing::data_decoder on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qdl_shared::fuzzing::data_decoder(data));
