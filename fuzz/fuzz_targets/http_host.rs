#![no_main]
//! See `switchboard::fuzzing::http_host`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::http_host(data));
