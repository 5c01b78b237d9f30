#![no_main]
//! See `switchboard::fuzzing::twilio_signature`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::twilio_signature(data));
