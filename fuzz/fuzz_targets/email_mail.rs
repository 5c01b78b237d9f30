#![no_main]
//! See `switchboard::fuzzing::email_mail`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::email_mail(data));
