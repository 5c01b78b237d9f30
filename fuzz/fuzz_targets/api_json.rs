#![no_main]
//! See `switchboard::fuzzing::api_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::api_json(data));
