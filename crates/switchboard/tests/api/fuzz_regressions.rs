//! The fuzz targets' seed corpus and every input that once failed them
//! (`fuzz/regressions/<target>/`), replayed on every test run, without a fuzzer.

use std::path::PathBuf;

use switchboard::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let seeds = fuzzing::replay_dir(&fuzz.join("corpus").join(target), run);
    fuzzing::replay_dir(&fuzz.join("regressions").join(target), run);
    assert!(seeds > 0, "no seeds for {target}");
}

#[test]
fn twilio_form() {
    replay("twilio_form", fuzzing::twilio_form);
}

#[test]
fn twilio_signature() {
    replay("twilio_signature", fuzzing::twilio_signature);
}

#[test]
fn http_host() {
    replay("http_host", fuzzing::http_host);
}

#[test]
fn api_json() {
    replay("api_json", fuzzing::api_json);
}

#[test]
fn email_mail() {
    replay("email_mail", fuzzing::email_mail);
}
