//! The dispatcher: sends deliveries, records every attempt, and schedules retries with
//! exponential backoff and jitter. New deliveries arrive in memory right after their commit
//! (already leased to this node), so the happy path never waits for a poll; a poller picks up
//! due retries and deliveries whose lease expired (a crashed sender's work). The store stays
//! the source of truth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use switchboard_events::headers;
use switchboard_events::standard::WebhookSecret;
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::domain::time::Clock;
use crate::keys::SigningKeys;
use crate::ssrf;
use crate::store::{AttemptRecord, DeliveryJob, NextStep, Store};

/// How much of a subscriber's response is kept with the attempt.
const RESPONSE_EXCERPT_BYTES: usize = 4096;
const USER_AGENT_VALUE: &str = concat!("Switchboard/", env!("CARGO_PKG_VERSION"));

/// Hands freshly committed deliveries to the dispatcher.
#[derive(Clone)]
pub struct DispatchHandle {
    tx: mpsc::UnboundedSender<DeliveryJob>,
}

impl DispatchHandle {
    pub fn hand_off(&self, jobs: Vec<DeliveryJob>) {
        for job in jobs {
            // If the dispatcher is gone the lease expires and the poller of the next run sends it.
            let _ = self.tx.send(job);
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub jitter: f64,
}

impl RetryPolicy {
    /// After `attempts` failed attempts: when to try again, or `None` when the schedule is spent.
    pub fn next_delay(&self, attempts: u32, random_unit: f64) -> Option<Duration> {
        let base = self.schedule.get(attempts.checked_sub(1)? as usize)?;
        let factor = 1.0 + self.jitter * (2.0 * random_unit - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: Arc<SigningKeys>,
    client: reqwest::Client,
    retry: RetryPolicy,
    lease: Duration,
    poll_interval: Duration,
    allow_private_targets: bool,
    permits: Arc<Semaphore>,
    rx: mpsc::UnboundedReceiver<DeliveryJob>,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Arc<SigningKeys>,
    ) -> anyhow::Result<(Dispatcher, DispatchHandle)> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.delivery_timeout)
            .connect_timeout(config.delivery_timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        if !config.allow_private_targets {
            builder = builder.dns_resolver(Arc::new(ssrf::GuardedResolver));
        }
        let client = builder.build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Dispatcher {
                store,
                clock,
                keys,
                client,
                retry: RetryPolicy {
                    schedule: config.retry_schedule.clone(),
                    jitter: config.retry_jitter,
                },
                lease: config.delivery_lease,
                poll_interval: config.poll_interval,
                allow_private_targets: config.allow_private_targets,
                permits: Arc::new(Semaphore::new(config.dispatcher_concurrency)),
                rx,
            },
            DispatchHandle { tx },
        ))
    }

    /// Runs until the process stops.
    pub async fn run(mut self) {
        let this = Arc::new(Sender {
            store: self.store.clone(),
            clock: self.clock.clone(),
            keys: self.keys.clone(),
            client: self.client.clone(),
            retry: self.retry.clone(),
            allow_private_targets: self.allow_private_targets,
        });
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = self.rx.recv() => match job {
                    Some(job) => self.spawn(&this, job).await,
                    None => return,
                },
                _ = poll.tick() => self.poll(&this).await,
            }
        }
    }

    async fn spawn(&self, sender: &Arc<Sender>, job: DeliveryJob) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        let sender = sender.clone();
        let span = tracing::info_span!("delivery", delivery_id = %job.delivery_id, webhook_id = %job.webhook_id, event_id = %job.event_id);
        tokio::spawn(
            async move {
                sender.deliver(job).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// Claim what is due, no more than can be sent right now (a claimed job waiting for a
    /// permit would burn its lease).
    async fn poll(&self, sender: &Arc<Sender>) {
        let free = self.permits.available_permits().min(500) as u32;
        if free == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let lease_until = now + self.lease.as_millis() as i64;
        match self.store.emit_due_calls(now, lease_until).await {
            Ok(jobs) => {
                for job in jobs {
                    self.spawn(sender, job).await;
                }
            }
            Err(e) => warn!(error = %e, "emitting calls that waited for a recording failed"),
        }
        match self.store.claim_due(now, lease_until, free).await {
            Ok(jobs) => {
                for job in jobs {
                    self.spawn(sender, job).await;
                }
            }
            Err(e) => warn!(error = %e, "claiming due deliveries failed"),
        }
    }
}

/// The part of the dispatcher each delivery task shares.
struct Sender {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: Arc<SigningKeys>,
    client: reqwest::Client,
    retry: RetryPolicy,
    allow_private_targets: bool,
}

impl Sender {
    async fn deliver(&self, job: DeliveryJob) {
        let started_at = self.clock.now_ms();
        let timer = Instant::now();
        let result = self.send(&job, started_at).await;
        let duration_ms = timer.elapsed().as_millis() as i64;
        let (http_status, error, response_excerpt) = match result {
            Ok((status, excerpt)) => (Some(status), None, excerpt),
            Err(error) => (None, Some(error), None),
        };
        let success = http_status.is_some_and(|s| (200..300).contains(&s));
        let attempts = job.attempts + 1;
        let next = if success {
            NextStep::Delivered
        } else {
            match self.retry.next_delay(attempts, rand::random::<f64>()) {
                Some(delay) => NextStep::RetryAt(self.clock.now_ms() + delay.as_millis() as i64),
                None => NextStep::Failed,
            }
        };
        match (&next, &error) {
            (NextStep::Delivered, _) => {
                info!(
                    status = http_status,
                    duration_ms,
                    attempt = attempts,
                    "delivered"
                )
            }
            (_, Some(error)) => {
                warn!(error = %error, duration_ms, attempt = attempts, next = ?next, "delivery attempt failed")
            }
            (_, None) => {
                warn!(status = http_status, duration_ms, attempt = attempts, next = ?next, "delivery attempt refused")
            }
        }
        let record = AttemptRecord {
            started_at,
            duration_ms,
            http_status,
            error,
            response_excerpt,
        };
        if let Err(e) = self
            .store
            .record_attempt(&job.delivery_id, &record, next)
            .await
        {
            // The lease expires and the delivery is sent again: at-least-once, never lost.
            warn!(error = %e, "recording the attempt failed");
        }
    }

    /// One POST: `Ok((status, response excerpt))`, or why no response came.
    async fn send(&self, job: &DeliveryJob, now_ms: i64) -> Result<(u16, Option<String>), String> {
        if !self.allow_private_targets {
            ssrf::check_literal(&job.url, false).map_err(|e| format!("refused target: {e}"))?;
        }
        let secret = WebhookSecret::parse(&job.secret)
            .map_err(|e| format!("webhook secret unusable: {e}"))?;
        let timestamp = now_ms / 1000;
        let signature = secret.sign(&job.event_id, timestamp, &job.payload);
        let response = self
            .client
            .post(&job.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .header(headers::WEBHOOK_ID, &job.event_id)
            .header(headers::WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(headers::WEBHOOK_SIGNATURE, signature)
            .header(
                headers::GHL_SIGNATURE,
                self.keys.ed25519_signature(&job.payload),
            )
            .body(job.payload.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = response.status().as_u16();
        Ok((status, read_excerpt(response).await))
    }
}

/// The first bytes of the response body (the client's timeout bounds the read).
async fn read_excerpt(mut response: reqwest::Response) -> Option<String> {
    let mut buf = Vec::new();
    while buf.len() < RESPONSE_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    if buf.is_empty() {
        return None;
    }
    buf.truncate(RESPONSE_EXCERPT_BYTES);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// An error with its causes, classified: `timeout: …`, `connect: …`, or `request: …`.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_schedule_within_jitter() {
        let policy = RetryPolicy {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(30)],
            jitter: 0.2,
        };
        assert_eq!(policy.next_delay(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(policy.next_delay(1, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(policy.next_delay(1, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(policy.next_delay(2, 0.5), Some(Duration::from_secs(30)));
        assert_eq!(policy.next_delay(3, 0.5), None);
        assert_eq!(policy.next_delay(0, 0.5), None);
    }
}
