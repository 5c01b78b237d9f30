//! What this node's dispatcher tells its ingest, without a store round trip: the webhooks
//! whose new deliveries it does not take now, and those whose backlog it holds in the event
//! stream.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::DeliveryJob;

/// The webhooks whose new deliveries this node's dispatcher does not take at ingest: it holds
/// enough of theirs already (a webhook on probation, one whose subscriber has not answered,
/// keeps a few). Their deliveries are stored unleased and claimed by a poll once the lane has
/// room, so a subscriber that hangs cannot fill the node's memory with its backlog.
///
/// It also names the webhooks whose backlog this node's dispatcher holds in the event stream
/// (on probation with an attempt out): an ingest holds them itself, in its own transaction,
/// when the dispatcher has not yet, so that no message after the first writes their rows.
#[derive(Debug, Default)]
pub struct Handoffs {
    held: WebhookSet,
    stream: RwLock<StreamHolds>,
    sink: JobSink,
    /// Told after a commit while `first_waiting` (`on_events_committed`).
    committed: Told,
    /// Webhooks wait for their first delivery from the stream: the dispatcher looks for
    /// their events after each commit.
    first_waiting: AtomicBool,
}

/// A closure set once by the dispatcher: where deliveries committed for it go at once
/// (`Handoffs::hand_off`), or what it is told after a commit (`Handoffs::on_events_committed`).
struct SetOnce<F: ?Sized>(OnceLock<Box<F>>);

impl<F: ?Sized> Default for SetOnce<F> {
    fn default() -> Self {
        SetOnce(OnceLock::new())
    }
}

impl<F: ?Sized> std::fmt::Debug for SetOnce<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        })
    }
}

type JobSink = SetOnce<dyn Fn(Vec<DeliveryJob>) + Send + Sync>;
type Told = SetOnce<dyn Fn() + Send + Sync>;

/// The webhooks held in the stream, and what decides it, under one lock: a delivery committed
/// for a webhook on probation holds it (`delivery_committed`) only while it is on probation.
#[derive(Debug, Default)]
struct StreamHolds {
    in_stream: HashSet<String>,
    /// Of `in_stream`, those whose hold no transaction has written yet.
    unwritten: HashSet<String>,
    /// The webhooks on probation (their subscriber has not answered, or not the last time).
    probation: HashSet<String>,
}

impl Handoffs {
    /// Hold (or let go of) the new deliveries to this webhook.
    pub fn hold(&self, webhook_id: &str, held: bool) {
        self.held.set(webhook_id, held);
    }

    pub fn takes(&self, webhook_id: &str) -> bool {
        !self.held.contains(webhook_id)
    }

    /// The dispatcher takes the deliveries leased to it through `send` (set once).
    pub fn hand_off_to(&self, send: impl Fn(Vec<DeliveryJob>) + Send + Sync + 'static) {
        let _ = self.sink.0.set(Box::new(send));
    }

    /// Whether committed deliveries can be handed over here (`hand_off`).
    pub fn hands_off(&self) -> bool {
        self.sink.0.get().is_some()
    }

    /// Deliveries just committed and leased to this node: to its dispatcher, at the commit
    /// (the group commit hands over a whole batch's at once; each request's handler, woken
    /// after it, handed over its own up to 12 ms later while the cores were busy). Called
    /// after every commit of events; with webhooks waiting for their first delivery, their
    /// dispatcher is told (`on_events_committed`).
    pub fn hand_off(&self, jobs: Vec<DeliveryJob>) {
        if let (Some(send), false) = (self.sink.0.get(), jobs.is_empty()) {
            send(jobs);
        }
        if self.first_waiting.load(AtomicOrdering::Relaxed) {
            if let Some(tell) = self.committed.0.get() {
                tell();
            }
        }
    }

    /// What the dispatcher is told after a commit while webhooks wait for their first
    /// delivery (set once).
    pub fn on_events_committed(&self, tell: impl Fn() + Send + Sync + 'static) {
        let _ = self.committed.0.set(Box::new(tell));
    }

    /// Whether webhooks of this node's dispatcher wait for their first delivery from the
    /// stream.
    pub fn first_waiting(&self, waiting: bool) {
        self.first_waiting.store(waiting, AtomicOrdering::Relaxed);
    }

    fn stream(&self) -> RwLockReadGuard<'_, StreamHolds> {
        self.stream.read().expect("handoffs lock")
    }

    fn stream_mut(&self) -> RwLockWriteGuard<'_, StreamHolds> {
        self.stream.write().expect("handoffs lock")
    }

    /// Hold (or stop holding) this webhook's backlog in the event stream at ingest.
    pub fn hold_in_stream(&self, webhook_id: &str, held: bool) {
        let mut stream = self.stream_mut();
        if !held {
            stream.in_stream.remove(webhook_id);
            stream.unwritten.remove(webhook_id);
        } else if stream.in_stream.insert(webhook_id.to_owned()) {
            stream.unwritten.insert(webhook_id.to_owned());
        }
    }

    pub fn in_stream(&self, webhook_id: &str) -> bool {
        self.stream().in_stream.contains(webhook_id)
    }

    /// Whether this webhook is on probation, as the dispatcher last saw it.
    pub fn probation(&self, webhook_id: &str, on_probation: bool) {
        let mut stream = self.stream_mut();
        if on_probation {
            stream.probation.insert(webhook_id.to_owned());
        } else {
            stream.probation.remove(webhook_id);
        }
    }

    /// A delivery to this webhook was just committed and goes to the dispatcher: if the webhook
    /// is on probation, that delivery is the one its dispatcher tries it with, and the
    /// dispatcher will hold the rest of its backlog in the stream (`sync_backlog`). Held here
    /// at once, the next group commit, which begins while the dispatcher takes these
    /// deliveries, holds it already: with a thousand new webhooks, that commit read and held
    /// them all (30 ms) where it could have left them out.
    pub fn delivery_committed(&self, webhook_id: &str) {
        let anticipate =
            |s: &StreamHolds| s.probation.contains(webhook_id) && !s.in_stream.contains(webhook_id);
        if !anticipate(&self.stream()) {
            return;
        }
        let mut stream = self.stream_mut();
        if anticipate(&stream) {
            stream.in_stream.insert(webhook_id.to_owned());
            stream.unwritten.insert(webhook_id.to_owned());
        }
    }

    /// Whether this webhook's hold in the stream is yet to be written.
    pub fn hold_unwritten(&self, webhook_id: &str) -> bool {
        self.stream().unwritten.contains(webhook_id)
    }

    /// The webhooks held in the stream whose hold is yet to be written.
    pub fn unwritten_holds(&self) -> Vec<String> {
        self.stream().unwritten.iter().cloned().collect()
    }

    /// These holds were written by a transaction that has committed.
    pub fn holds_written<S: AsRef<str>>(&self, webhook_ids: &[S]) {
        if webhook_ids.is_empty() {
            return;
        }
        let mut stream = self.stream_mut();
        for id in webhook_ids {
            stream.unwritten.remove(id.as_ref());
        }
    }
}

/// Webhook ids the dispatcher writes and every ingest reads.
#[derive(Debug, Default)]
struct WebhookSet(RwLock<HashSet<String>>);

impl WebhookSet {
    fn set(&self, webhook_id: &str, member: bool) {
        let mut set = self.0.write().expect("handoffs lock");
        if member {
            set.insert(webhook_id.to_owned());
        } else {
            set.remove(webhook_id);
        }
    }

    fn contains(&self, webhook_id: &str) -> bool {
        self.0.read().expect("handoffs lock").contains(webhook_id)
    }
}

#[cfg(test)]
mod tests {
    use super::Handoffs;

    /// A committed delivery holds a webhook on probation in the stream, once, and only while on
    /// probation; the dispatcher's own hold then finds it written by the ingest that took it.
    #[test]
    fn a_delivery_committed_holds_only_a_webhook_on_probation() {
        let h = Handoffs::default();
        h.probation("new", true);
        h.delivery_committed("new");
        h.delivery_committed("proven");
        assert!(h.in_stream("new") && !h.in_stream("proven"));
        assert!(h.hold_unwritten("new"));
        assert_eq!(h.unwritten_holds(), vec!["new".to_owned()]);
        h.holds_written(&["new"]);
        // The dispatcher now holds it too: it is written already.
        h.hold_in_stream("new", true);
        assert!(!h.hold_unwritten("new"));
        assert!(h.unwritten_holds().is_empty());
        // It answered: no committed delivery holds it again.
        h.hold_in_stream("new", false);
        h.probation("new", false);
        h.delivery_committed("new");
        assert!(!h.in_stream("new"));
        // Held again later by the dispatcher: to be written again.
        h.hold_in_stream("new", true);
        assert!(h.hold_unwritten("new"));
        h.holds_written(&["new"]);
        assert!(!h.hold_unwritten("new"));
    }
}
