//! Durable state behind one trait, [`Store`] (the sum of one trait per concern, in `traits`):
//! locations, channel accounts, contacts, conversations, messages, their events, and the
//! delivery outbox. A message is stored in the same
//! transaction as its event and one delivery row per matching webhook, so it is never stored
//! without its deliveries, nor a delivery queued for a message that was rolled back.
//!
//! Implementations: [`sqlite::SqliteStore`] (embedded default) and [`postgres::PostgresStore`]
//! (many nodes on one database), from the one body of SQL in `sql/`, a file per concern. This
//! file holds the shared types.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use switchboard_events::{Direction, EventType, MessageType};

use crate::domain::Fact;

mod account_cache;
pub mod faults;
mod group_commit;
mod handoffs;
mod migrations;
pub mod postgres;
mod sql;
pub mod sqlite;
mod statements;
mod traits;

pub use account_cache::AccountCache;
pub use faults::{FaultKind, StorageFault, StorageFaults};
pub use group_commit::{Batcher, GroupCommit, Write, Written};
pub use handoffs::Handoffs;
pub use traits::{
    BacklogTopUp, Backlogs, Calls, Deliveries, Feed, FirstDeliveries, Locations, Messages, Setup,
    Store, Webhooks,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The store cannot write now (a full disk, a lock, a database that is down): nothing
    /// was written, and the same request may succeed later.
    #[error(transparent)]
    Unavailable(#[from] StorageFault),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match FaultKind::of(&e) {
            Some(kind) => StoreError::Unavailable(StorageFault {
                kind,
                source: anyhow::Error::new(e).context("database"),
            }),
            None => StoreError::Internal(anyhow::Error::new(e).context("database")),
        }
    }
}

impl StoreError {
    /// Whether this is a storage fault (logged once per episode by the store, not by callers).
    pub fn is_fault(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Delivery row states (persisted; never renamed).
pub mod delivery_status {
    pub const PENDING: &str = "pending";
    pub const DELIVERED: &str = "delivered";
    pub const FAILED: &str = "failed";
    /// The webhook was deleted before the delivery finished.
    pub const CANCELLED: &str = "cancelled";
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "ser_iso")]
    pub created_at: i64,
}

/// What `PUT /v1/locations/{id}/channels/{provider}` stores.
#[derive(Debug, Clone)]
pub struct ChannelAccountInput {
    pub provider: &'static str,
    pub account_id: String,
    pub secret: String,
    pub settings: serde_json::Value,
    /// Addresses (phone numbers, …) routed to this location; each belongs to one location.
    pub addresses: Vec<String>,
    /// What the configuration answer shows once and never again (a generated secret): not
    /// stored beyond `secret`.
    pub shown_once: Option<serde_json::Value>,
}

/// How a webhook receives the events of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// In parallel, as fast as the limits allow.
    #[default]
    None,
    /// One at a time, in order; a failing delivery holds back only its own conversation.
    Conversation,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Conversation => "conversation",
        }
    }
}

/// A webhook's delivery health, kept with it so every node sees the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebhookHealth {
    pub consecutive_failures: u32,
    /// Start of the current run of failures (none since the last success).
    pub failing_since: Option<i64>,
    /// The circuit breaker is open until then: its deliveries wait.
    pub breaker_open_until: Option<i64>,
    /// Its subscriber answered the last attempt (any HTTP status): after a restart it is not
    /// on probation.
    pub answered: bool,
}

impl WebhookHealth {
    /// No attempt of it is stored: no answer, no failure.
    pub fn never_tried(&self) -> bool {
        !self.answered && self.consecutive_failures == 0 && self.failing_since.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub location_id: Option<String>,
    pub secret: String,
    pub created_at: i64,
    /// Only these `messageType`s (None: all).
    pub message_types: Option<Vec<String>>,
    /// Only this direction (None: both).
    pub direction: Option<Direction>,
    pub ordering: Ordering,
    pub max_in_flight: Option<u32>,
    pub max_per_second: Option<f64>,
    /// This webhook's own retry delays (None: the server's).
    pub retry_schedule: Option<Vec<Duration>>,
    /// Private networks this webhook may reach even when the server refuses private targets.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Also sign with the legacy `x-wh-signature` (RSA), for consumers of HighLevel's older SDKs.
    pub legacy_signature: bool,
    /// Secrets replaced by rotations whose overlap has not ended, newest first: each still
    /// signs until its own end.
    pub previous_secrets: Vec<PreviousSecret>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
    pub health: WebhookHealth,
    /// Its backlog is held in the event stream after this place (`seq`): ingest writes no
    /// deliveries for it, a dispatcher writes those of the later events in turn. Set while its
    /// subscriber has not answered (see `Backlogs`).
    pub backlog_after_seq: Option<i64>,
}

/// A secret replaced by a rotation, signing until `until` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: String,
    pub until: i64,
}

/// The most replaced secrets that sign at once; a rotation beyond them ends the oldest.
pub const MAX_PREVIOUS_SECRETS: usize = 5;

impl Webhook {
    /// The replaced secrets still signing at `now`, newest first.
    pub fn previous_secrets_at(&self, now: i64) -> impl Iterator<Item = &PreviousSecret> {
        self.previous_secrets.iter().filter(move |p| p.until > now)
    }

    /// A webhook with the defaults for everything but what is given.
    pub fn new(id: String, url: String, events: Vec<EventType>, secret: String, now: i64) -> Self {
        Webhook {
            id,
            url,
            events,
            location_id: None,
            secret,
            created_at: now,
            message_types: None,
            direction: None,
            ordering: Ordering::None,
            max_in_flight: None,
            max_per_second: None,
            retry_schedule: None,
            allowed_networks: vec![],
            legacy_signature: false,
            previous_secrets: vec![],
            disabled_at: None,
            disabled_reason: None,
            health: WebhookHealth::default(),
            backlog_after_seq: None,
        }
    }

    /// Whether an event of this type, location and (for messages) type and direction goes here.
    pub fn matches(
        &self,
        event_type: EventType,
        location_id: Option<&str>,
        message: Option<(&MessageType, Direction)>,
    ) -> bool {
        if !self.events.contains(&event_type) {
            return false;
        }
        if let (Some(mine), Some(theirs)) = (&self.location_id, location_id) {
            if mine != theirs {
                return false;
            }
        }
        if let Some((message_type, direction)) = message {
            if let Some(types) = &self.message_types {
                if !types.iter().any(|t| t == message_type.as_str()) {
                    return false;
                }
            }
            if self.direction.is_some_and(|d| d != direction) {
                return false;
            }
        }
        true
    }
}

/// One delivery to send; the webhook's settings come from the dispatcher's copy of it.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery_id: String,
    /// The event id: `webhookId` in the body and the `webhook-id` header.
    pub event_id: String,
    pub webhook_id: String,
    pub payload: Bytes,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Attempts made before the current retry cycle (a replay or manual retry starts one).
    pub retry_offset: u32,
    /// For ordered webhooks: the conversation and the event's place in the stream.
    pub conversation_id: Option<String>,
    pub event_seq: i64,
    /// The lease this node holds on the delivery.
    pub lease_until: i64,
    /// A retry (not the first attempt): fresh deliveries go first.
    pub is_retry: bool,
    /// The event's `x-ghl-signature` once one of its deliveries has computed it. The
    /// deliveries of one event queued together share it, so a fan-out to N subscribers signs
    /// once instead of N times (an Ed25519 signature is most of a delivery's CPU).
    pub ghl_signature: std::sync::Arc<std::sync::OnceLock<String>>,
}

/// The moment and the limits an ingest works with.
#[derive(Debug, Clone)]
pub struct IngestContext {
    /// `appId` put in every event (HighLevel SDK consumers match it against their client id).
    pub app_id: Option<std::sync::Arc<str>>,
    pub now: i64,
    /// New deliveries are leased to the caller until then, to be sent by it at once; `None`
    /// (a node without a dispatcher): they wait for a dispatcher to claim them.
    pub lease_until: Option<i64>,
    /// The webhooks whose deliveries the caller's dispatcher does not take now; None: it
    /// takes every one.
    pub handoffs: Option<std::sync::Arc<Handoffs>>,
    /// How long a call waits for a recording Switchboard asked for.
    pub call_recording_wait_ms: i64,
    /// A value the provider sends once, stored with the request's facts: (provider, value).
    pub nonce: Option<(&'static str, String)>,
    /// Mails one conversation may receive in a minute and have delivered; past it a mail is
    /// stored as `suppressed` and not delivered. None: no cap.
    pub mail_flood_cap: Option<u32>,
}

impl IngestContext {
    /// Whether the caller's dispatcher holds this webhook's backlog in the event stream.
    pub fn holds_in_stream(&self, webhook_id: &str) -> bool {
        self.handoffs
            .as_ref()
            .is_some_and(|h| h.in_stream(webhook_id))
    }

    /// Both ask the same dispatcher (or none) which webhooks it holds.
    pub fn same_handoffs(&self, other: &IngestContext) -> bool {
        match (&self.handoffs, &other.handoffs) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The lease of a new delivery to this webhook; None: it waits for a claim.
    pub fn lease_for(&self, webhook_id: &str) -> Option<i64> {
        self.lease_until
            .filter(|_| self.handoffs.as_ref().is_none_or(|h| h.takes(webhook_id)))
    }
}

/// One provider request waiting for the next group commit.
#[derive(Debug)]
pub struct IngestItem {
    /// Each location's facts: one request may carry facts for several (a provider secret
    /// several locations share). They commit together or not at all.
    pub parts: Vec<(String, Vec<Fact>)>,
    pub context: IngestContext,
}

/// One attempt waiting for the next group commit.
#[derive(Debug)]
pub struct AttemptItem {
    pub job: DeliveryJob,
    pub attempt: AttemptRecord,
    pub next: NextStep,
}

/// The result of storing one provider request's facts.
#[derive(Debug, Clone, Default)]
pub struct IngestOutcome {
    /// Message ids, new or (for a provider retry) already stored.
    pub message_ids: Vec<String>,
    /// Deliveries created by this call, already leased to the caller until `lease_until`, and
    /// not yet handed over to its dispatcher.
    pub jobs: Vec<DeliveryJob>,
    /// Deliveries created by this call that the group commit handed over to the caller's
    /// dispatcher at once (`Handoffs::hand_off`).
    pub handed_off: usize,
    /// New mails stored as `suppressed` (over the flood cap of their conversation): (message
    /// id, conversation id).
    pub suppressed: Vec<(String, String)>,
}

/// One attempt as the dispatcher saw it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub duration_ms: i64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(i64),
    Failed,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptReport {
    pub attempt: i64,
    #[serde(serialize_with = "ser_iso")]
    pub at: i64,
    pub duration_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// `timeout`, `connect`, `request`, `refused target`, … (the part of `error` before `:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    pub id: String,
    pub webhook_id: String,
    pub url: String,
    pub status: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_iso"
    )]
    pub next_attempt_at: Option<i64>,
    /// A pending delivery that is not being sent: `webhook_disabled` or `breaker_open`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<&'static str>,
    pub attempts: Vec<AttemptReport>,
}

fn ser_iso<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::domain::time::iso_millis(*ms))
}

fn ser_opt_iso<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => ser_iso(ms, s),
        None => s.serialize_none(),
    }
}

/// Pending deliveries by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready to send now.
    pub due: u64,
    /// Waiting for a retry.
    pub scheduled: u64,
    /// Leased by a sender.
    pub in_flight: u64,
    /// Not sent while their webhook is disabled or its breaker open.
    pub held: u64,
}

/// Why a pending delivery is not being sent, if it is held.
pub mod held {
    pub const WEBHOOK_DISABLED: &str = "webhook_disabled";
    pub const BREAKER_OPEN: &str = "breaker_open";
}
