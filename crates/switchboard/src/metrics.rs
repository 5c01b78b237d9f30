//! Prometheus metrics, in the text exposition format at `/metrics`: deliveries by outcome,
//! attempt latency, queue depth (read from the store at most once a second), breaker state per
//! webhook.

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

/// A webhook's state in this node's dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookState {
    pub breaker: BreakerState,
    /// Its subscriber has not answered yet, or did not answer its last attempt: one attempt
    /// at a time, outside the shared slots.
    pub probation: bool,
    /// Its backlog is held in the event stream (no delivery rows written at ingest).
    pub backlog_held: bool,
}

impl Default for WebhookState {
    /// A webhook the dispatcher has not tried yet: closed, and on probation.
    fn default() -> Self {
        WebhookState {
            breaker: BreakerState::Closed,
            probation: true,
            backlog_held: false,
        }
    }
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
    /// Refused provider requests by (provider, error code): both come from fixed lists, so
    /// whatever outsiders send, the label set stays small.
    provider_rejected: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Lines of the rejected-request log left this second: outsiders cannot flood the log.
    rejection_log: LogBudget,
    /// Facts a verified request carried for an address no location claims (or one whose
    /// account holds another secret), skipped, by provider.
    facts_skipped: Mutex<BTreeMap<&'static str, u64>>,
    /// Mails stored over their conversation's flood cap, not delivered.
    mails_suppressed: AtomicU64,
    /// Each webhook's breaker and probation, as this node's dispatcher last saw them.
    webhooks: Mutex<BTreeMap<String, WebhookState>>,
    /// Of `in_flight`, the attempts for webhooks on probation.
    probation_in_flight: AtomicI64,
    /// The queue depth last read from the store, and when: scrapes share one reading a second.
    depth: tokio::sync::Mutex<Option<(std::time::Instant, crate::store::QueueDepth)>>,
}

/// How long one reading of the queue depth serves every scrape.
pub const QUEUE_DEPTH_MAX_AGE: Duration = Duration::from_secs(1);

/// At most `REJECTION_LOG_PER_SECOND` log lines a second; the lines left out are counted and
/// reported with the next line written.
#[derive(Default)]
struct LogBudget {
    /// (the second, lines written in it, lines left out since the last line written)
    state: Mutex<(u64, u32, u64)>,
}

const REJECTION_LOG_PER_SECOND: u32 = 10;

impl LogBudget {
    /// Some(lines left out before this one) when this line may be written in `second`.
    fn take(&self, second: u64) -> Option<u64> {
        let mut state = self.state.lock().expect("log budget lock");
        let (at, written, skipped) = &mut *state;
        if *at != second {
            (*at, *written) = (second, 0);
        }
        if *written >= REJECTION_LOG_PER_SECOND {
            *skipped += 1;
            return None;
        }
        *written += 1;
        Some(std::mem::take(skipped))
    }
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

    /// An attempt started (+1) or finished (-1); `on_probation`: in a probation slot.
    pub fn in_flight(&self, delta: i64, on_probation: bool) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
        if on_probation {
            self.probation_in_flight.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn provider_request(&self) {
        self.provider_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A provider request answered with a client error (bad signature, unknown number, …).
    /// Returns whether to log it, with how many rejections were not logged before it.
    pub fn provider_rejected(
        &self,
        provider: &'static str,
        code: &'static str,
        second: u64,
    ) -> Option<u64> {
        *self
            .provider_rejected
            .lock()
            .expect("metrics lock")
            .entry((provider, code))
            .or_default() += 1;
        self.rejection_log.take(second)
    }

    /// A fact skipped because no location it may go to claims its address. Returns whether
    /// to log it, with how many log lines were left out before it (the same budget as
    /// refused requests).
    pub fn fact_skipped(&self, provider: &'static str, second: u64) -> Option<u64> {
        *self
            .facts_skipped
            .lock()
            .expect("metrics lock")
            .entry(provider)
            .or_default() += 1;
        self.rejection_log.take(second)
    }

    /// A mail stored over its conversation's flood cap. Returns whether to log it, with how
    /// many lines were not logged before it (outsiders choose how often this happens).
    pub fn mail_suppressed(&self, second: u64) -> Option<u64> {
        self.mails_suppressed.fetch_add(1, Ordering::Relaxed);
        self.rejection_log.take(second)
    }

    pub fn breaker(&self, webhook_id: &str, state: BreakerState) {
        self.update_webhook(webhook_id, |w| w.breaker = state);
    }

    pub fn probation(&self, webhook_id: &str, on_probation: bool) {
        self.update_webhook(webhook_id, |w| w.probation = on_probation);
    }

    pub fn backlog_held(&self, webhook_id: &str, held: bool) {
        self.update_webhook(webhook_id, |w| w.backlog_held = held);
    }

    fn update_webhook(&self, webhook_id: &str, change: impl FnOnce(&mut WebhookState)) {
        let mut webhooks = self.webhooks.lock().expect("metrics lock");
        match webhooks.get_mut(webhook_id) {
            Some(state) => change(state),
            None => change(webhooks.entry(webhook_id.to_owned()).or_default()),
        }
    }

    /// The webhook's state as this node's dispatcher last saw it; None before it read it.
    pub fn webhook_state(&self, webhook_id: &str) -> Option<WebhookState> {
        self.webhooks
            .lock()
            .expect("metrics lock")
            .get(webhook_id)
            .copied()
    }

    pub fn forget_webhook(&self, webhook_id: &str) {
        self.webhooks
            .lock()
            .expect("metrics lock")
            .remove(webhook_id);
    }

    /// The queue depth, read from the store at most once per [`QUEUE_DEPTH_MAX_AGE`]: the
    /// reading counts every pending delivery, so however many scrape at once, one reads
    /// while the others wait for its answer. None when the store does not answer.
    pub async fn queue_depth(
        &self,
        store: &dyn crate::store::Store,
        now_ms: i64,
    ) -> Option<crate::store::QueueDepth> {
        let mut last = self.depth.lock().await;
        if let Some((at, depth)) = *last {
            if at.elapsed() < QUEUE_DEPTH_MAX_AGE {
                return Some(depth);
            }
        }
        let depth = store.queue_depth(now_ms).await.ok()?;
        *last = Some((std::time::Instant::now(), depth));
        Some(depth)
    }

    /// The exposition text, with the queue depth the caller read from the store.
    pub fn render(
        &self,
        depth: Option<crate::store::QueueDepth>,
        faults: &crate::store::StorageFaults,
    ) -> String {
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
        counter(
            &mut out,
            "switchboard_provider_requests_rejected_total",
            "Provider requests refused with a 4xx, by provider and error code (invalid_signature: wrong auth token or URL; not_found: number not connected; …).",
        );
        for ((provider, code), n) in self.provider_rejected.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "switchboard_provider_requests_rejected_total{{provider=\"{provider}\",reason=\"{code}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "switchboard_mails_suppressed_total",
            "Mails stored but not delivered: over max_mails_per_conversation_per_minute in their conversation (an auto-reply loop).",
        );
        let _ = writeln!(
            out,
            "switchboard_mails_suppressed_total {}",
            self.mails_suppressed.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "switchboard_provider_facts_skipped_total",
            "Facts a verified request carried for another location that were not filed: no location claims their address, or its account holds another secret.",
        );
        for (provider, n) in self.facts_skipped.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "switchboard_provider_facts_skipped_total{{provider=\"{provider}\"}} {n}"
            );
        }
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
        counter(
            &mut out,
            "switchboard_storage_failures_total",
            "Writes the store could not make, by kind: disk_full, locked (past the busy timeout), io, read_only, connection (database unreachable), resources.",
        );
        for (kind, n) in faults.counts() {
            let _ = writeln!(
                out,
                "switchboard_storage_failures_total{{kind=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        let name = "switchboard_storage_writable";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while writes succeed, 0 from a failed write until the next one succeeds.\n# TYPE {name} gauge\n{name} {}",
            u8::from(!faults.failing())
        );
        let name = "switchboard_delivery_queue";
        if let Some(depth) = depth {
            let _ = writeln!(
                out,
                "# HELP {name} Pending deliveries: due (ready to send), scheduled (waiting for a retry), in_flight (leased by a sender), held (its webhook disabled or its breaker open).\n# TYPE {name} gauge"
            );
            for (state, n) in [
                ("due", depth.due),
                ("scheduled", depth.scheduled),
                ("in_flight", depth.in_flight),
                ("held", depth.held),
            ] {
                let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
            }
        }
        let name = "switchboard_deliveries_sending";
        let _ = writeln!(
            out,
            "# HELP {name} Deliveries this node is sending now.\n# TYPE {name} gauge\n{name} {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let name = "switchboard_deliveries_sending_on_probation";
        let _ = writeln!(
            out,
            "# HELP {name} Of the deliveries this node is sending, those for webhooks on probation (outside the shared slots).\n# TYPE {name} gauge\n{name} {}",
            self.probation_in_flight.load(Ordering::Relaxed)
        );
        let webhooks = self.webhooks.lock().expect("metrics lock");
        let name = "switchboard_webhook_breaker_state";
        let _ = writeln!(
            out,
            "# HELP {name} Circuit breaker per webhook: 0 closed, 1 open, 2 half-open.\n# TYPE {name} gauge"
        );
        for (webhook, state) in webhooks.iter() {
            let _ = writeln!(
                out,
                "{name}{{webhook=\"{webhook}\"}} {}",
                state.breaker as u8
            );
        }
        let name = "switchboard_webhook_probation";
        let _ = writeln!(
            out,
            "# HELP {name} Per webhook: 1 while on probation (not answered yet, or its last attempt got no answer), else 0.\n# TYPE {name} gauge"
        );
        for (webhook, state) in webhooks.iter() {
            let _ = writeln!(
                out,
                "{name}{{webhook=\"{webhook}\"}} {}",
                u8::from(state.probation)
            );
        }
        let name = "switchboard_webhook_backlog_held";
        let _ = writeln!(
            out,
            "# HELP {name} Per webhook: 1 while its backlog is held in the event stream (no delivery rows written at ingest), else 0.\n# TYPE {name} gauge"
        );
        for (webhook, state) in webhooks.iter() {
            let _ = writeln!(
                out,
                "{name}{{webhook=\"{webhook}\"}} {}",
                u8::from(state.backlog_held)
            );
        }
        drop(webhooks);
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
        let text = m.render(
            Some(crate::store::QueueDepth {
                due: 4,
                scheduled: 5,
                in_flight: 6,
                held: 7,
            }),
            &crate::store::StorageFaults::default(),
        );
        assert!(text.contains("switchboard_delivery_attempts_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("switchboard_delivery_attempts_total{outcome=\"retrying\"} 1"));
        assert!(
            text.contains("switchboard_delivery_attempt_duration_seconds_bucket{le=\"0.005\"} 1")
        );
        assert!(text.contains("switchboard_delivery_attempt_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("switchboard_delivery_attempt_duration_seconds_count 2"));
        assert!(text.contains("switchboard_delivery_queue{state=\"scheduled\"} 5"));
        assert!(text.contains("switchboard_delivery_queue{state=\"held\"} 7"));
        assert!(text.contains("switchboard_webhook_breaker_state{webhook=\"W1\"} 1"));
    }

    #[test]
    fn rejections_are_counted_by_reason_and_logged_within_a_budget() {
        let m = Metrics::default();
        let logged: Vec<Option<u64>> = (0..12)
            .map(|_| m.provider_rejected("acme", "invalid_signature", 100))
            .collect();
        // Ten lines in second 100, then none; the next second's first line tells of the two.
        assert!(logged[..10].iter().all(|l| *l == Some(0)), "{logged:?}");
        assert_eq!(&logged[10..], &[None, None]);
        assert_eq!(m.provider_rejected("acme", "not_found", 101), Some(2));
        assert_eq!(m.provider_rejected("acme", "not_found", 101), Some(0));
        let text = m.render(None, &crate::store::StorageFaults::default());
        assert!(text.contains(
            "switchboard_provider_requests_rejected_total{provider=\"acme\",reason=\"invalid_signature\"} 12"
        ), "{text}");
        assert!(text.contains(
            "switchboard_provider_requests_rejected_total{provider=\"acme\",reason=\"not_found\"} 2"
        ), "{text}");
    }
}
