//! Sending one attempt: the signatures (Standard Webhooks over each current secret, and the
//! deployment's key), the POST, an excerpt of the answer, the outcome classified (delivered,
//! retry at, gone, failed) and recorded with the lease this node holds.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use switchboard_events::headers;
use switchboard_events::standard::{self, WebhookSecret};
use tracing::{info, warn};

use super::schedule::retry_after;
use super::{store_failed, Command, Completion, RetryPolicy, SendResult, Shared, LEASE_MARGIN};
use crate::metrics::Outcome;
use crate::ssrf::TargetPolicy;
use crate::store::{AttemptRecord, DeliveryJob, NextStep, StoreError, StoreResult, Webhook};

/// How much of a subscriber's response is kept with the attempt.
const RESPONSE_EXCERPT_BYTES: usize = 4096;

const USER_AGENT_VALUE: &str = concat!("Switchboard/", env!("CARGO_PKG_VERSION"));

/// A webhook as the dispatcher uses it: its settings and HTTP clients that connect only
/// where its target policy permits.
pub(super) struct Target {
    pub(super) webhook: Webhook,
    /// One client for each runtime attempts run on: a client's connections are driven on the
    /// runtime that opened them, so a webhook that leaves probation must not go on using
    /// connections the probation runtime drives.
    clients: Clients,
    /// The webhook's URL, parsed and checked against the target policy once per reload (a
    /// host name is checked again at every connection, by the client's resolver).
    url: Result<reqwest::Url, String>,
    /// The current secret and, during rotations' overlaps, the replaced ones with their ends;
    /// decoded once per reload, not per attempt.
    secrets: Result<(WebhookSecret, Vec<(WebhookSecret, i64)>), String>,
}

impl Target {
    pub(super) fn new(webhook: Webhook, clients: Clients, policy: &TargetPolicy) -> Target {
        let parse = |s: &str| WebhookSecret::parse(s).map_err(|e| e.to_string());
        let secrets = parse(&webhook.secret).and_then(|current| {
            let previous = webhook
                .previous_secrets
                .iter()
                .map(|p| Ok((parse(&p.secret)?, p.until)))
                .collect::<Result<Vec<_>, String>>()?;
            Ok((current, previous))
        });
        let url = policy.check_literal(&webhook.url);
        Target {
            webhook,
            clients,
            url,
            secrets,
        }
    }

    /// The secrets that sign at `now`.
    fn signing_secrets(&self, now: i64) -> Result<Vec<WebhookSecret>, String> {
        let (current, previous) = self.secrets.as_ref().map_err(Clone::clone)?;
        let mut secrets = vec![current.clone()];
        secrets.extend(
            previous
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(secret, _)| secret.clone()),
        );
        Ok(secrets)
    }
}

/// The HTTP clients of webhooks that answer and of webhooks on probation.
#[derive(Clone)]
pub(super) struct Clients {
    pub(super) answered: reqwest::Client,
    pub(super) probation: reqwest::Client,
}

impl Clients {
    /// The client of the runtime an attempt runs on.
    fn for_attempt(&self, on_probation: bool) -> &reqwest::Client {
        if on_probation {
            &self.probation
        } else {
            &self.answered
        }
    }
}

/// Run a store call on the runtime that serves requests and writes the store: a connection the
/// call opens (PostgreSQL) is driven by the runtime that opened it, and the probation runtime
/// must not own the store's connections.
async fn on_main<T: Send + 'static>(
    shared: &Shared,
    call: impl Future<Output = StoreResult<T>> + Send + 'static,
) -> StoreResult<T> {
    shared
        .main
        .spawn(call)
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("a store call did not finish: {e}")))?
}

/// Send one delivery, record the attempt, decide what comes next. `on_probation` (the slot it
/// holds) is handed back with the outcome.
pub(super) async fn send_and_record(
    shared: &Shared,
    target: &Target,
    mut job: DeliveryJob,
    on_probation: bool,
) -> Completion {
    let webhook = &target.webhook;
    let delivery_id = job.delivery_id.clone();
    let conversation_id = job.conversation_id.clone();
    let completion = |slow, result| Completion {
        on_probation,
        slow,
        webhook_id: webhook.id.clone(),
        delivery_id: delivery_id.clone(),
        conversation_id: conversation_id.clone(),
        result,
    };
    // Keep the lease comfortably longer than this attempt can take.
    let now = shared.clock.now_ms();
    if job.lease_until - now < (shared.timeout + LEASE_MARGIN).as_millis() as i64 {
        let until = shared.lease_until();
        let (store, id, held) = (
            shared.store.clone(),
            job.delivery_id.clone(),
            job.lease_until,
        );
        match on_main(
            shared,
            async move { store.extend_lease(&id, held, until).await },
        )
        .await
        {
            Ok(true) => job.lease_until = until,
            Ok(false) => return completion(false, SendResult::Lost),
            Err(e) => {
                store_failed(&e, "renewing the lease failed");
                return completion(false, SendResult::Lost);
            }
        }
    }

    let started_at = shared.clock.now_ms();
    let timer = Instant::now();
    let sending = send(shared, target, &job, started_at, on_probation);
    tokio::pin!(sending);
    // On a shared slot, an attempt that has had no answer for a while moves to a probation slot
    // (told before its `Done`, on the same channel): a subscriber that starts hanging must not
    // hold the slots of those that answer until its timeouts.
    let mut slow = false;
    let result = if on_probation || shared.slow_after >= shared.timeout {
        sending.await
    } else {
        tokio::select! {
            // An answer that came with the timer is an answer.
            biased;
            result = &mut sending => result,
            _ = tokio::time::sleep(shared.slow_after) => {
                slow = true;
                let _ = shared.tx.send(Command::Slow {
                    webhook_id: webhook.id.clone(),
                    delivery_id: delivery_id.clone(),
                });
                sending.await
            }
        }
    };
    let took = timer.elapsed();
    if (on_probation || slow) && result.is_ok() {
        // Its lane leaves probation now rather than once the attempt is recorded (with a
        // thousand new webhooks tried at once, the record waited tens of milliseconds for the
        // store, and every delivery queued behind this one with it).
        let _ = shared.tx.send(Command::Answered(webhook.id.clone()));
    }
    let (http_status, error, response_excerpt, wait) = match result {
        Ok(r) => (Some(r.status), None, r.excerpt, r.retry_after),
        Err(error) => (None, Some(storable(error)), None, None),
    };
    let success = http_status.is_some_and(|s| (200..300).contains(&s));
    let gone = http_status == Some(410);
    let policy = match &webhook.retry_schedule {
        Some(schedule) => RetryPolicy {
            schedule: schedule.clone(),
            jitter: shared.retry.jitter,
        },
        None => shared.retry.clone(),
    };
    let failures = (job.attempts + 1).saturating_sub(job.retry_offset);
    let next = if success {
        NextStep::Delivered
    } else {
        match policy.next_delay(failures, rand::random::<f64>()) {
            // 429/503 with Retry-After: the subscriber says when, within the schedule's bounds.
            Some(delay) => {
                let delay = wait.map_or(delay, |w| policy.clamp(w));
                NextStep::RetryAt(shared.clock.now_ms() + delay.as_millis() as i64)
            }
            // A 410 leaves the delivery waiting for the webhook to be enabled again.
            None if gone => NextStep::RetryAt(shared.clock.now_ms()),
            None => NextStep::Failed,
        }
    };
    let duration_ms = took.as_millis() as i64;
    let outcome = match next {
        NextStep::Delivered => Outcome::Delivered,
        NextStep::RetryAt(_) => Outcome::Retrying,
        NextStep::Failed => Outcome::Failed,
    };
    shared.metrics.attempt(outcome, took);
    match (&next, &error) {
        (NextStep::Delivered, _) => {
            info!(
                status = http_status,
                duration_ms,
                attempt = job.attempts + 1,
                "delivered"
            )
        }
        (_, Some(error)) => {
            warn!(error = %error, duration_ms, attempt = job.attempts + 1, next = ?next, "delivery attempt failed")
        }
        (_, None) => {
            warn!(status = http_status, duration_ms, attempt = job.attempts + 1, next = ?next, "delivery attempt refused")
        }
    }
    let record = AttemptRecord {
        started_at,
        duration_ms,
        http_status,
        error,
        response_excerpt,
    };
    let mut recorded = shared.store.record_attempt(&job, &record, next).await;
    if let Err(e) = &recorded {
        if !e.is_fault() {
            // Not a fault that passes (the store refused something the attempt held): record
            // it without the answer, so that the delivery ends as the attempt says instead of
            // being sent again at every lease expiry.
            tracing::error!(error = %e, "recording the attempt failed; recording it without the answer");
            let stripped = AttemptRecord {
                error: Some(storable(format!(
                    "the attempt could not be recorded whole: {e}"
                ))),
                response_excerpt: None,
                ..record
            };
            recorded = shared.store.record_attempt(&job, &stripped, next).await;
        }
    }
    let health = match recorded {
        Ok(h) => h,
        Err(e) => {
            // The lease expires and the delivery is sent again: at-least-once, never lost.
            store_failed(&e, "recording the attempt failed");
            return completion(slow, SendResult::Lost);
        }
    };
    let failing_too_long = !success
        && health.failing_since.is_some_and(|since| {
            shared.clock.now_ms() - since >= shared.auto_disable_after.as_millis() as i64
        });
    if gone || failing_too_long {
        let reason = if gone { "gone" } else { "failing" };
        let (store, id) = (shared.store.clone(), webhook.id.clone());
        let (now, lease_until) = (shared.clock.now_ms(), shared.lease_until());
        let disabled = on_main(shared, async move {
            store.disable_webhook(&id, reason, now, lease_until).await
        });
        match disabled.await {
            Ok(jobs) => {
                warn!(webhook_id = %webhook.id, reason, "webhook disabled");
                shared.webhooks_changed();
                let _ = shared.tx.send(Command::Jobs(jobs));
            }
            Err(e) => store_failed(&e, "disabling the webhook failed"),
        }
    }
    completion(
        slow,
        SendResult::Attempted {
            next,
            health,
            answered: http_status.is_some(),
        },
    )
}

struct Response {
    status: u16,
    excerpt: Option<String>,
    retry_after: Option<Duration>,
}

/// One POST: the subscriber's answer, or why none came.
async fn send(
    shared: &Shared,
    target: &Target,
    job: &DeliveryJob,
    now_ms: i64,
    on_probation: bool,
) -> Result<Response, String> {
    let webhook = &target.webhook;
    let url = target
        .url
        .as_ref()
        .map_err(|e| format!("refused target: {e}"))?;
    let secrets = target
        .signing_secrets(now_ms)
        .map_err(|e| format!("webhook secret unusable: {e}"))?;
    let timestamp = now_ms / 1000;
    let signature = standard::signature_header(&secrets, &job.event_id, timestamp, &job.payload);
    let mut request = target.clients.for_attempt(on_probation).post(url.clone());
    if webhook.legacy_signature {
        let legacy = shared
            .keys
            .rsa_signature(&job.payload)
            .map_err(|e| format!("legacy signature: {e}"))?;
        request = request.header(headers::WH_SIGNATURE, legacy);
    }
    let response = request
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .header(headers::WEBHOOK_ID, &job.event_id)
        .header(headers::WEBHOOK_TIMESTAMP, timestamp.to_string())
        .header(headers::WEBHOOK_SIGNATURE, signature)
        .header(
            headers::GHL_SIGNATURE,
            job.ghl_signature
                .get_or_init(|| shared.keys.ed25519_signature(&job.payload))
                .as_str(),
        )
        .body(job.payload.clone())
        .send()
        .await
        .map_err(describe)?;
    let status = response.status();
    let retry_after = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
    .then(|| response.headers().get(RETRY_AFTER))
    .flatten()
    .and_then(|v| retry_after(v, std::time::SystemTime::now()));
    Ok(Response {
        status: status.as_u16(),
        excerpt: read_excerpt(response).await,
        retry_after,
    })
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
    Some(storable(String::from_utf8_lossy(&buf).into_owned()))
}

/// Text any store can keep: PostgreSQL's `text` cannot hold NUL, which a subscriber's answer
/// (or an error quoting it) may contain; each becomes U+FFFD, as undecodable bytes do.
pub(super) fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// An error with its causes, classified: `refused target: …`, `timeout: …`, `connect: …`, or
/// `request: …`.
fn describe(e: reqwest::Error) -> String {
    let causes: Vec<_> =
        std::iter::successors(std::error::Error::source(&e), |s| s.source()).collect();
    let kind = if causes.iter().any(|s| s.is::<crate::ssrf::RefusedTarget>()) {
        "refused target"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    let mut text = format!("{kind}: {e}");
    for cause in causes {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}
