//! Durable state behind one trait: locations, channel accounts, contacts, conversations,
//! messages, their events, and the delivery outbox. A message is stored in the same
//! transaction as its event and one delivery row per matching webhook, so it is never stored
//! without its deliveries, nor a delivery queued for a message that was rolled back.
//!
//! Implementations: [`sqlite::SqliteStore`] (embedded default). SQL lives in the backend module.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use switchboard_events::EventType;

use crate::channels::{ChannelAccount, RouteKey};
use crate::domain::Fact;

mod migrations;
pub mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Internal(anyhow::Error::new(e).context("database"))
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
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub location_id: Option<String>,
    pub secret: String,
    pub created_at: i64,
}

impl Webhook {
    pub fn matches(&self, event_type: EventType, location_id: &str) -> bool {
        self.events.contains(&event_type)
            && self.location_id.as_deref().is_none_or(|l| l == location_id)
    }
}

/// Everything needed to send one delivery, with no further database read.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery_id: String,
    /// The event id: `webhookId` in the body and the `webhook-id` header.
    pub event_id: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub payload: Bytes,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// The moment and the limits an ingest works with.
#[derive(Debug, Clone, Copy)]
pub struct IngestContext {
    pub now: i64,
    /// New deliveries are leased to the caller until then.
    pub lease_until: i64,
    /// How long a call waits for a recording Switchboard asked for.
    pub call_recording_wait_ms: i64,
}

/// The result of storing one provider request's facts.
#[derive(Debug, Clone, Default)]
pub struct IngestOutcome {
    /// Message ids, new or (for a provider retry) already stored.
    pub message_ids: Vec<String>,
    /// Deliveries created by this call, already leased to the caller until `lease_until`.
    pub jobs: Vec<DeliveryJob>,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn health(&self) -> StoreResult<()>;

    /// Called once at start by the only node of an embedded store: leases held by a previous
    /// run of this process are released so its unfinished deliveries resume at once.
    async fn release_leases(&self) -> StoreResult<u64>;

    async fn create_location(&self, name: &str, now: i64) -> StoreResult<Location>;
    async fn get_location(&self, id: &str) -> StoreResult<Option<Location>>;

    /// Create or replace a location's account for one provider, with its addresses.
    /// `Conflict` when an address belongs to another location.
    async fn put_channel_account(
        &self,
        location_id: &str,
        input: &ChannelAccountInput,
        now: i64,
    ) -> StoreResult<()>;

    /// The account a provider request claims: by address first, else by account id when
    /// exactly one location uses it.
    async fn find_channel_account(
        &self,
        provider: &str,
        key: &RouteKey,
    ) -> StoreResult<Option<ChannelAccount>>;

    async fn create_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>>;
    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>>;
    /// Soft-deletes; its unfinished deliveries are cancelled. `false` when there was none.
    async fn delete_webhook(&self, id: &str, now: i64) -> StoreResult<bool>;

    /// File facts under contacts and conversations and write messages, events and deliveries
    /// in one transaction. A message whose provider id is already stored for the location
    /// changes nothing. Call facts are merged into the call's state; the call is emitted once,
    /// when its outcome is final. New deliveries are leased to the caller.
    async fn ingest(
        &self,
        location_id: &str,
        facts: Vec<Fact>,
        context: &IngestContext,
    ) -> StoreResult<IngestOutcome>;

    /// Emit the calls that waited long enough for a recording that never came.
    async fn emit_due_calls(&self, now: i64, lease_until: i64) -> StoreResult<Vec<DeliveryJob>>;

    /// The message's event body as sent (the first event of the message).
    async fn message_event(&self, message_id: &str) -> StoreResult<Option<Bytes>>;
    async fn message_deliveries(&self, message_id: &str) -> StoreResult<Vec<DeliveryReport>>;

    /// Lease up to `limit` pending deliveries that are due and not leased by anyone alive.
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryJob>>;

    /// Record an attempt and move the delivery on, releasing its lease.
    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &AttemptRecord,
        next: NextStep,
    ) -> StoreResult<()>;
}
