//! Scheduling: the retry policy (backoff with jitter, a subscriber's `Retry-After` kept within
//! the schedule), the poll that claims due retries and expired leases, and retention's pruning.

use std::time::Duration;

use reqwest::header::HeaderValue;

use super::{store_failed, Dispatcher};
use crate::store::IngestContext;

/// Retention deletes at most this many rows per statement.
const RETENTION_BATCH: u32 = 500;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub jitter: f64,
}

impl RetryPolicy {
    /// After `failures` failed attempts in this cycle: when to try again, or `None` when the
    /// schedule is spent.
    pub fn next_delay(&self, failures: u32, random_unit: f64) -> Option<Duration> {
        let base = self.schedule.get(failures.checked_sub(1)? as usize)?;
        let factor = 1.0 + self.jitter * (2.0 * random_unit - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }

    /// A subscriber's `Retry-After`, kept within the schedule's bounds.
    pub fn clamp(&self, wanted: Duration) -> Duration {
        let min = self.schedule.iter().min().copied().unwrap_or_default();
        let max = self.schedule.iter().max().copied().unwrap_or_default();
        wanted.clamp(min, max)
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub(super) fn retry_after(value: &HeaderValue, now: std::time::SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

impl Dispatcher {
    /// Claim what is due, no more than can be sent soon (a claimed job waiting too long would
    /// have to renew its lease), and emit calls that waited long enough for a recording.
    pub(super) async fn poll(&mut self) {
        let now = self.shared.clock.now_ms();
        let lease_until = self.shared.lease_until();
        let context = IngestContext {
            app_id: self.shared.app_id.clone(),
            now,
            lease_until: Some(lease_until),
            handoffs: Some(self.shared.handoffs.clone()),
            call_recording_wait_ms: 0,
            nonce: None,
            mail_flood_cap: None,
        };
        match self.shared.store.emit_due_calls(&context).await {
            Ok(jobs) => self.accept(jobs),
            Err(e) => store_failed(&e, "emitting calls that waited for a recording failed"),
        }
        // Held backlogs that can take deliveries now get them written, for the claim below;
        // webhooks waiting for their first delivery look for events other nodes committed.
        self.top_up_backlogs(now).await;
        self.rehold_untried();
        self.backlogs.first_wanted = true;
        // Lanes on probation hold a few each, counted against their own limit.
        let queued: usize = self
            .lanes
            .values()
            .filter(|l| l.proven)
            .map(|l| l.fresh.len() + l.retries.len())
            .sum();
        let room = (2 * self.concurrency).saturating_sub(self.in_flight + queued);
        // No room: claimed at the first soon poll after a send ends (`finish`), not at the next
        // tick (a backlog given back under load waited a whole poll interval).
        self.claim_starved = room == 0;
        if room == 0 {
            return;
        }
        // A lane that already holds plenty waits: a slow subscriber's backlog must not fill
        // every claim while the others' retries wait.
        let full: Vec<String> = self
            .lanes
            .iter()
            .filter(|(id, lane)| self.targets.get(*id).is_some_and(|t| lane.full(&t.webhook)))
            .map(|(id, _)| id.clone())
            .collect();
        self.full_at_poll = full.iter().cloned().collect();
        let asked = room.min(500);
        match self
            .shared
            .store
            .claim_due(now, lease_until, asked as u32, &full)
            .await
        {
            Ok(jobs) => {
                // As many as asked: more may be due (a backlog given back, written at once),
                // claimed at the next soon poll rather than at the next tick.
                self.poll_soon |= jobs.len() >= asked;
                self.accept(jobs);
            }
            Err(e) => store_failed(&e, "claiming due deliveries failed"),
        }
    }

    /// Delete old attempts and finished events in small batches, off the dispatcher's loop.
    pub(super) fn prune(&self) {
        let store = self.shared.store.clone();
        let before = self.shared.clock.now_ms() - self.retention.as_millis() as i64;
        tokio::spawn(async move {
            loop {
                match store.prune(before, RETENTION_BATCH).await {
                    Ok(0) => return,
                    Ok(n) => {
                        tracing::debug!(rows = n, "retention pruned");
                        // Let ingest and deliveries have the writer between batches.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        store_failed(&e, "retention failed");
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(30)],
            jitter: 0.2,
        }
    }

    #[test]
    fn backoff_follows_the_schedule_within_jitter() {
        let policy = policy();
        assert_eq!(policy.next_delay(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(policy.next_delay(1, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(policy.next_delay(1, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(policy.next_delay(2, 0.5), Some(Duration::from_secs(30)));
        assert_eq!(policy.next_delay(3, 0.5), None);
        assert_eq!(policy.next_delay(0, 0.5), None);
        for _ in 0..1000 {
            let d = policy.next_delay(2, rand::random::<f64>()).unwrap();
            assert!(
                d >= Duration::from_secs(24) && d <= Duration::from_secs(36),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_and_clamped() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            retry_after(&HeaderValue::from_static("120"), now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            retry_after(&HeaderValue::from_str(&date).unwrap(), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(&HeaderValue::from_static("soon"), now), None);
        assert_eq!(
            policy().clamp(Duration::from_secs(1)),
            Duration::from_secs(5)
        );
        assert_eq!(
            policy().clamp(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
        assert_eq!(
            policy().clamp(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }
}
