//! The store's interface, one trait per concern; [`Store`] is their sum, which the server
//! holds as `Arc<dyn Store>`. Each concern is implemented once for both backends by its own
//! macro in `sql/`.

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    AttemptRecord, ChannelAccountInput, DeliveryJob, DeliveryReport, IngestContext, IngestOutcome,
    Location, NextStep, QueueDepth, StorageFaults, StoreResult, Webhook, WebhookHealth,
};
use crate::channels::{ChannelAccount, RouteKey};
use crate::domain::Fact;

/// Setup and health: shared secrets, storage faults, wake-ups, leases left by a previous run.
#[async_trait]
pub trait Setup: Send + Sync + 'static {
    /// The database belongs to this process alone (SQLite).
    fn embedded(&self) -> bool;

    /// Wake-ups when another node queued work for the dispatchers (PostgreSQL `LISTEN`).
    fn work_notifications(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<()>>;

    /// The store's storage faults: counted by kind, and whether writes fail now.
    fn faults(&self) -> &StorageFaults;

    /// Whether the store can take writes: a read while writes succeed; while they have been
    /// failing, a write, so that readiness comes back once the fault is gone.
    async fn health(&self) -> StoreResult<()>;

    /// A server secret shared by every node (signing keys, the generated admin token).
    async fn secret(&self, name: &str) -> StoreResult<Option<String>>;

    /// Keep `value` as the secret unless one is there already; returns the one kept.
    async fn put_secret_if_absent(&self, name: &str, value: &str) -> StoreResult<String>;

    /// Called once at start by the only node of an embedded store: leases held by a previous
    /// run of this process are released so its unfinished deliveries resume at once.
    async fn release_leases(&self) -> StoreResult<u64>;
}

/// Locations and their channel accounts.
#[async_trait]
pub trait Locations: Send + Sync + 'static {
    async fn create_location(&self, name: &str, now: i64) -> StoreResult<Location>;

    async fn get_location(&self, id: &str) -> StoreResult<Option<Location>>;

    /// Every location, oldest first.
    async fn list_locations(&self) -> StoreResult<Vec<Location>>;

    /// A location's account for one provider and its addresses (sorted), if any.
    async fn get_channel_account(
        &self,
        location_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(ChannelAccount, Vec<String>)>>;

    /// Disconnect a location's account for one provider and free its addresses; false when
    /// there was none. What was stored under it stays.
    async fn delete_channel_account(&self, location_id: &str, provider: &str) -> StoreResult<bool>;

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
}

/// Webhooks: their settings, secrets, disabled state and breaker.
#[async_trait]
pub trait Webhooks: Send + Sync + 'static {
    async fn create_webhook(&self, webhook: &Webhook) -> StoreResult<()>;

    /// Every webhook that is not deleted, disabled ones included.
    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>>;

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>>;

    /// Save a webhook's settings (not its secret, disabled state or health, which have their
    /// own calls).
    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()>;

    /// A new secret; the current one signs too until `previous_until`.
    /// `secret` replaces the current one, which signs on until `previous_until`; the secrets
    /// replaced before it keep their own ends (at most [`MAX_PREVIOUS_SECRETS`] in all), unless
    /// `previous_until <= now`: then every replaced secret stops signing at once.
    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        previous_until: i64,
        now: i64,
    ) -> StoreResult<()>;

    /// Soft-deletes; its unfinished deliveries are cancelled. `false` when there was none.
    async fn delete_webhook(&self, id: &str, now: i64) -> StoreResult<bool>;

    /// Disable a webhook and emit `WebhookDisabled` to the webhooks that subscribe to it, in
    /// one transaction. Its pending deliveries wait (the backlog resumes when it is enabled).
    /// Returns the new deliveries (leased), or none when it was already disabled.
    async fn disable_webhook(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<Vec<DeliveryJob>>;

    /// Enable a disabled webhook with fresh health; its pending deliveries become claimable.
    async fn enable_webhook(&self, id: &str) -> StoreResult<()>;

    /// Open (`Some`) or close (`None`) a webhook's circuit breaker.
    async fn set_breaker(&self, id: &str, open_until: Option<i64>) -> StoreResult<()>;
}

/// Messages: ingest (facts filed under contacts and conversations with their events and
/// deliveries) and a message's event as sent.
#[async_trait]
pub trait Messages: Send + Sync + 'static {
    /// File facts under contacts and conversations and write messages, events and deliveries
    /// in one transaction. A message whose provider id is already stored for the location
    /// changes nothing. Call facts are merged into the call's state; the call is emitted once,
    /// when its outcome is final. New deliveries are leased to the caller.
    async fn ingest(
        &self,
        location_id: &str,
        facts: Vec<Fact>,
        context: &IngestContext,
    ) -> StoreResult<IngestOutcome> {
        self.ingest_parts(vec![(location_id.to_owned(), facts)], context)
            .await
    }

    /// As [`Messages::ingest`], for the facts of one request that belong to several
    /// locations (`(location id, facts)`): everything commits in one transaction, or nothing
    /// does.
    async fn ingest_parts(
        &self,
        parts: Vec<(String, Vec<Fact>)>,
        context: &IngestContext,
    ) -> StoreResult<IngestOutcome>;

    /// The message's event body as sent (the first event of the message).
    async fn message_event(&self, message_id: &str) -> StoreResult<Option<Bytes>>;

    /// Whether a request carrying this nonce of `provider` was stored
    /// ([`IngestContext::nonce`]).
    async fn nonce_seen(&self, provider: &str, nonce: &str) -> StoreResult<bool>;
}

/// Calls whose outcome waited for a recording.
#[async_trait]
pub trait Calls: Send + Sync + 'static {
    /// Emit the calls that waited long enough for a recording that never came.
    async fn emit_due_calls(&self, context: &IngestContext) -> StoreResult<Vec<DeliveryJob>>;
}

/// Deliveries: claims and leases, attempts, retries and replays, the per-message report.
#[async_trait]
pub trait Deliveries: Send + Sync + 'static {
    /// Each delivery of the message's events, as it stands at `now`.
    async fn message_deliveries(
        &self,
        message_id: &str,
        now: i64,
    ) -> StoreResult<Vec<DeliveryReport>>;

    /// Lease up to `limit` pending deliveries that are due and not leased by anyone alive, of
    /// webhooks that are enabled and whose breaker is closed and that are not in
    /// `skip_webhooks` (lanes already full here); for ordered webhooks, only the first pending
    /// delivery of each conversation, and none while another of it is in flight.
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        skip_webhooks: &[String],
    ) -> StoreResult<Vec<DeliveryJob>>;

    /// Lease the first pending delivery of one conversation for an ordered webhook, when it is
    /// due and free.
    async fn claim_conversation_head(
        &self,
        webhook_id: &str,
        conversation_id: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<Option<DeliveryJob>>;

    /// Extend a lease this node holds (`current`); `false` when another node took it over.
    async fn extend_lease(&self, delivery_id: &str, current: i64, until: i64) -> StoreResult<bool>;

    /// Give back leases (delivery id, lease) this node holds on deliveries it will not send now.
    async fn release_leases_of(&self, leases: &[(String, i64)]) -> StoreResult<()>;

    /// Record an attempt and move the delivery on, releasing its lease; update the webhook's
    /// failure counters in the same transaction and return them (`breaker_open_until` is the
    /// dispatcher's own and not read here).
    async fn record_attempt(
        &self,
        job: &DeliveryJob,
        attempt: &AttemptRecord,
        next: NextStep,
    ) -> StoreResult<WebhookHealth>;

    /// Resend one delivery now (a finished one in a new retry cycle): leased to the caller and
    /// returned, or — for an ordered or disabled webhook — left for a claim in turn (`None`).
    /// `NotFound` when there is none (or its webhook was deleted), `Conflict` while it is
    /// being sent.
    async fn retry_delivery(
        &self,
        id: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<Option<DeliveryJob>>;

    /// Make a webhook's deliveries of events created in `[since, until]` pending again, due
    /// now, in a new retry cycle: only failed ones, or all. Returns (how many, how many in the
    /// range were pending already and were left as they were).
    async fn replay(
        &self,
        webhook_id: &str,
        since: i64,
        until: i64,
        only_failed: bool,
        now: i64,
    ) -> StoreResult<(u64, u64)>;
}

/// The events feed, retention and the queue's depth.
#[async_trait]
pub trait Feed: Send + Sync + 'static {
    /// Events after the cursor (`seq`), in order: (seq, payload).
    async fn list_events(&self, after: i64, limit: u32) -> StoreResult<Vec<(i64, Bytes)>>;

    /// Delete up to `batch` attempts, and events with their finished deliveries, older than
    /// `before`. Returns how many rows went.
    async fn prune(&self, before: i64, batch: u32) -> StoreResult<u64>;

    /// Deliveries waiting, by state.
    async fn queue_depth(&self, now: i64) -> StoreResult<QueueDepth>;
}

/// Backlogs held in the event stream: a webhook whose subscriber has not answered gets no
/// delivery rows at ingest; its deliveries are written from the events after its place, a few
/// at a time, as it can take them.
#[async_trait]
pub trait Backlogs: Send + Sync + 'static {
    /// From now on, hold these webhooks' backlogs in the stream (those already held stay as
    /// they are): those whose hold `handoffs` says is still unwritten once this call has the
    /// store's writer (an ingest may have written it while this call waited its turn).
    async fn hold_backlogs(
        &self,
        webhook_ids: &[String],
        handoffs: &super::Handoffs,
    ) -> StoreResult<()>;

    /// Write a held webhook's deliveries, of the events after its place, until it has `want`
    /// pending (`None`: every one; at most a thousand events are read in one call); with
    /// `release`, when no event is left after its place, give its deliveries back to ingest.
    async fn top_up_backlog(
        &self,
        webhook_id: &str,
        want: Option<u32>,
        release: bool,
        now: i64,
    ) -> StoreResult<BacklogTopUp>;

    /// The first delivery of each of these webhooks, held in the stream and never tried: of
    /// the first event after its place that goes to it, leased to the caller until
    /// `lease_until`, in one transaction (give it a hundred webhooks or so: ingest waits for
    /// it). A webhook with none yet stays held, its place moved past what was read.
    async fn first_deliveries(
        &self,
        webhook_ids: &[String],
        now: i64,
        lease_until: i64,
    ) -> StoreResult<FirstDeliveries>;
}

/// What `Backlogs::first_deliveries` did.
#[derive(Debug, Default)]
pub struct FirstDeliveries {
    /// Written and leased to the caller: to send now.
    pub jobs: Vec<super::DeliveryJob>,
    /// Waiting no more for a first delivery from the stream: not held (given back, or
    /// gone), disabled, or with a delivery pending already (written before it was held, or
    /// by another node).
    pub settled: Vec<String>,
    /// Some read as many events as one call may without finding theirs: call again.
    pub more: bool,
    /// Events came after some of their places (when none did, the call only read that).
    pub read: bool,
}

/// What a top-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BacklogTopUp {
    /// Deliveries written now.
    pub queued: u32,
    /// Events remain after its place (it reached `want`, or read as many as one call may).
    pub more: bool,
    /// Not held (any more): given back to ingest, or the webhook is gone.
    pub released: bool,
}

/// The whole store, the sum of its concerns: what the server holds as `Arc<dyn Store>`.
/// Each concern is implemented once for both backends by its own macro in `sql/`.
pub trait Store:
    Setup
    + Locations
    + Webhooks
    + Messages
    + Calls
    + Deliveries
    + Backlogs
    + Feed
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: Setup
        + Locations
        + Webhooks
        + Messages
        + Calls
        + Deliveries
        + Backlogs
        + Feed
        + Send
        + Sync
        + 'static
{
}
