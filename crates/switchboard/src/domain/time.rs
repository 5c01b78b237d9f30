//! Time: milliseconds since the Unix epoch everywhere inside, ISO-8601 with milliseconds and
//! `Z` on the wire. One clock abstraction so schedules can be tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The latest time [`iso_millis`] writes: 9999-12-31T23:59:59.999Z.
const MAX_ISO_MS: i64 = 253_402_300_799_999;

/// `2021-04-21T11:31:45.750Z` (times outside years 1970 to 9999 are clamped).
pub fn iso_millis(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_ISO_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_source_document() {
        assert_eq!(iso_millis(1_619_004_705_750), "2021-04-21T11:31:45.750Z");
        assert_eq!(iso_millis(1_715_169_462_000), "2024-05-08T11:57:42.000Z");
        assert_eq!(iso_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso_millis(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let c = ManualClock::new(1000);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3000);
    }
}
