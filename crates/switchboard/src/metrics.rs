//! Prometheus metrics, in the text exposition format at `/metrics`: deliveries by outcome,
//! attempt latency, queue depth (read from the store when scraped), breaker state per webhook.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the attempt latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retrying,
    Failed,
}

/// A webhook's circuit breaker, as exported (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

#[derive(Default)]
pub struct Metrics {
    delivered: AtomicU64,
    retrying: AtomicU64,
    failed: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    in_flight: AtomicI64,
    provider_requests: AtomicU64,
    breakers: Mutex<BTreeMap<String, BreakerState>>,
}

impl Metrics {
    pub fn attempt(&self, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Retrying => &self.retrying,
            Outcome::Failed => &self.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn provider_request(&self) {
        self.provider_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn breaker(&self, webhook_id: &str, state: BreakerState) {
        let mut breakers = self.breakers.lock().expect("metrics lock");
        breakers.insert(webhook_id.to_owned(), state);
    }

    pub fn forget_webhook(&self, webhook_id: &str) {
        self.breakers
            .lock()
            .expect("metrics lock")
            .remove(webhook_id);
    }

    /// The exposition text, with the queue depth the caller read from the store.
    pub fn render(&self, due: u64, scheduled: u64, leased: u64) -> String {
        let mut out = String::with_capacity(2048);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(
            &mut out,
            "switchboard_delivery_attempts_total",
            "Delivery attempts by outcome: delivered, retrying (will be retried), failed (gave up).",
        );
        for (label, value) in [
            ("delivered", &self.delivered),
            ("retrying", &self.retrying),
            ("failed", &self.failed),
        ] {
            let _ = writeln!(
                out,
                "switchboard_delivery_attempts_total{{outcome=\"{label}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "switchboard_provider_requests_total",
            "Provider requests stored (acknowledged).",
        );
        let _ = writeln!(
            out,
            "switchboard_provider_requests_total {}",
            self.provider_requests.load(Ordering::Relaxed)
        );
        let name = "switchboard_delivery_attempt_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending a delivery to the subscriber's answer (or error).\n# TYPE {name} histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        let name = "switchboard_delivery_queue";
        let _ = writeln!(
            out,
            "# HELP {name} Pending deliveries: due (ready to send), scheduled (waiting for a retry), in_flight (leased by a sender).\n# TYPE {name} gauge"
        );
        let _ = writeln!(out, "{name}{{state=\"due\"}} {due}");
        let _ = writeln!(out, "{name}{{state=\"scheduled\"}} {scheduled}");
        let _ = writeln!(out, "{name}{{state=\"in_flight\"}} {leased}");
        let name = "switchboard_deliveries_sending";
        let _ = writeln!(
            out,
            "# HELP {name} Deliveries this node is sending now.\n# TYPE {name} gauge\n{name} {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let name = "switchboard_webhook_breaker_state";
        let _ = writeln!(
            out,
            "# HELP {name} Circuit breaker per webhook: 0 closed, 1 open, 2 half-open.\n# TYPE {name} gauge"
        );
        for (webhook, state) in self.breakers.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{name}{{webhook=\"{webhook}\"}} {}", *state as u8);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.attempt(Outcome::Delivered, Duration::from_millis(3));
        m.attempt(Outcome::Retrying, Duration::from_millis(300));
        m.breaker("W1", BreakerState::Open);
        let text = m.render(4, 5, 6);
        assert!(text.contains("switchboard_delivery_attempts_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("switchboard_delivery_attempts_total{outcome=\"retrying\"} 1"));
        assert!(
            text.contains("switchboard_delivery_attempt_duration_seconds_bucket{le=\"0.005\"} 1")
        );
        assert!(text.contains("switchboard_delivery_attempt_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("switchboard_delivery_attempt_duration_seconds_count 2"));
        assert!(text.contains("switchboard_delivery_queue{state=\"scheduled\"} 5"));
        assert!(text.contains("switchboard_webhook_breaker_state{webhook=\"W1\"} 1"));
    }
}
