//! Tests (or parts of them) that cannot run on this machine say so where a person running
//! `cargo test --workspace` sees it: a `skipped:` line as it happens, written past the test
//! harness's capture of passing tests' output, and a summary with the count and the reasons
//! when the test binary exits. With `CI` set (any case of `true` or `1`) a skip is a failure
//! instead: CI must run everything.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, Once};

/// Whether tests that need a third-party tool or a privilege must fail when it is absent (CI)
/// or may skip.
pub fn required_by_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| means_ci(&v))
}

/// `true` in any case, or `1`.
fn means_ci(value: &str) -> bool {
    let value = value.trim();
    value.eq_ignore_ascii_case("true") || value == "1"
}

/// Reasons, each with the tests it skipped.
static SKIPPED: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());
static SUMMARY: Once = Once::new();

/// The calling test (or the part of it that needs what is missing) does not run here because
/// of `reason`: recorded and shown, or, with `CI` set, a failure.
pub fn skip(reason: &str) {
    assert!(
        !required_by_ci(),
        "CI is set, so this test may not skip, but: {reason}"
    );
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    // Straight to the process's stderr: `eprintln!` would be captured, and shown only if
    // the test failed.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
    SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(reason.to_owned())
        .or_default()
        .push(test);
    SUMMARY.call_once(|| {
        // SAFETY: `summary` is an `extern "C" fn()` that neither unwinds nor returns anything,
        // as `atexit` requires.
        unsafe {
            libc::atexit(summary);
        }
    });
}

/// At exit: how many tests skipped, and why.
extern "C" fn summary() {
    let skipped = match SKIPPED.lock() {
        Ok(s) => s,
        Err(e) => e.into_inner(),
    };
    let count: usize = skipped.values().map(Vec::len).sum();
    let mut text = format!(
        "\n{count} test{} skipped on this machine (CI=true makes each a failure):\n",
        if count == 1 { "" } else { "s" }
    );
    for (reason, tests) in skipped.iter() {
        text.push_str(&format!("  {:>4} × {reason}\n", tests.len()));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

#[test]
fn ci_is_read_in_any_case() {
    for (value, required) in [
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("1", true),
        ("false", false),
        ("0", false),
        ("", false),
    ] {
        assert_eq!(means_ci(value), required, "{value}");
    }
}
