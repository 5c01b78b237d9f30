#![no_main]
//! See `switchboard::fuzzing::twilio_form`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::twilio_form(data));
