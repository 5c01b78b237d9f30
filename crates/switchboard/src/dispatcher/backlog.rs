//! Backlogs held in the event stream. While a webhook is on probation with an attempt out (its
//! subscriber has not answered yet, or did not answer its last attempt), its new events cost
//! ingest nothing: the store writes no delivery rows for it (`Backlogs::hold_backlogs`), only
//! its place in the stream. The dispatcher writes its deliveries from there as it can take
//! them (`top_up_backlog`): one at a time on probation, all of them once it answers (at the
//! next poll, at once), and then gives it back to ingest.
//!
//! Without this, each message's transaction wrote a row per hanging webhook: with 1,000 of
//! them, every healthy subscriber's event waited for 1,000 inserts.

use std::collections::HashMap;
use std::time::Instant;

use super::{store_failed, Command, Dispatcher, SOON_POLL_GAP};
use crate::store::FirstDeliveries;

/// Webhooks a transaction of `Backlogs::first_deliveries` handles.
const FIRST_PER_CALL: usize = 100;

/// This node's view of one held backlog.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Held {
    /// The store may have deliveries to write for it that it can take: top up at the next poll.
    pub(super) due: bool,
    /// Held for a first delivery from the stream that another delivery came before (written
    /// before the hold, or sent by another node or before a restart): every delivery written
    /// and given back to ingest, as the hold was only ever for that first one.
    give_back: bool,
}

/// Held backlogs by webhook id, the webhooks to hold at the end of this round, and those whose
/// hold is being written.
#[derive(Debug, Default)]
pub(super) struct Backlogs {
    pub(super) held: HashMap<String, Held>,
    to_hold: Vec<String>,
    /// Holds being written, by webhook: not topped up (nor given back) before they are
    /// committed, as a give-back read before would be undone by the hold.
    writing: HashMap<String, u32>,
    /// Webhooks never tried may have events: look for their first deliveries.
    pub(super) first_wanted: bool,
    /// A call of `first_deliveries` is out.
    first_running: bool,
    /// The last call found nothing: the next not before then (a webhook whose filters match
    /// nothing of a busy stream would otherwise cost a transaction a commit).
    first_after: Option<Instant>,
}

impl Backlogs {
    /// A top-up may write something now (it answered, or deliveries left its queue).
    pub(super) fn due(&mut self, webhook_id: &str) -> bool {
        match self.held.get_mut(webhook_id) {
            Some(h) => {
                h.due = true;
                true
            }
            None => false,
        }
    }

    /// Held for its first delivery only, and that is not to be (`Held::give_back`).
    fn give_back(&mut self, webhook_id: &str) -> bool {
        let held = self.held.get_mut(webhook_id);
        if let Some(h) = held {
            h.due = true;
            h.give_back = true;
            true
        } else {
            false
        }
    }

    /// A webhook seen held in the store (by another node, or before a restart).
    pub(super) fn seen_held(&mut self, webhook_id: &str) {
        self.held.entry(webhook_id.to_owned()).or_insert(Held {
            due: true,
            give_back: false,
        });
    }

    /// This round asked to hold some.
    pub(super) fn holding(&self) -> bool {
        !self.to_hold.is_empty()
    }

    pub(super) fn forget(&mut self, webhook_id: &str) {
        self.held.remove(webhook_id);
    }
}

impl Dispatcher {
    /// A lane on probation with an attempt out or queued: hold its backlog in the stream, at
    /// once at ingest (the next message's transaction holds it if this node's own hold has not
    /// committed yet), and in a transaction of its own. Once it answers, ingest stops holding
    /// it; its top-up gives it back.
    pub(super) fn sync_backlog(&mut self, webhook_id: &str) {
        let Some(lane) = self.lanes.get_mut(webhook_id) else {
            return;
        };
        let hold = !lane.proven && (lane.busy() || lane.untried);
        let in_stream = hold || (!lane.proven && lane.in_stream);
        // Ingest may have held it already (`Handoffs::delivery_committed`), and must let go of
        // it if it answered since.
        let shared = self.shared.handoffs.in_stream(webhook_id);
        if in_stream != lane.in_stream || in_stream != shared {
            lane.in_stream = in_stream;
            self.shared.handoffs.hold_in_stream(webhook_id, in_stream);
            // Held in the store already (seen there, or this node's hold written): ingest
            // need not hold it first.
            let written = self.backlogs.held.contains_key(webhook_id)
                && !self.backlogs.writing.contains_key(webhook_id);
            if in_stream && written {
                self.shared.handoffs.holds_written(&[webhook_id]);
            }
        }
        if hold && !self.backlogs.held.contains_key(webhook_id) {
            self.backlogs
                .held
                .insert(webhook_id.to_owned(), Held::default());
            self.backlogs.to_hold.push(webhook_id.to_owned());
            self.shared.metrics.backlog_held(webhook_id, true);
        }
    }

    /// Hold the backlogs this round asked for, in one transaction of a task of its own: the
    /// loop goes on meanwhile (under load the write waited 36–45 ms behind ingest's, and every
    /// delivery to a webhook that answers with it). Ingest holds them already (`sync_backlog`).
    pub(super) fn hold_backlogs(&mut self) {
        if self.backlogs.to_hold.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.backlogs.to_hold);
        for id in &ids {
            *self.backlogs.writing.entry(id.clone()).or_default() += 1;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // Those an ingest has held meanwhile (on SQLite, the first after their delivery
            // was committed; marked once it committed) are held: not written again. The store
            // marks those it writes (a `Held` may come after the webhook was held anew).
            let (unwritten, written): (Vec<String>, Vec<String>) = ids
                .into_iter()
                .partition(|id| shared.handoffs.hold_unwritten(id));
            if !written.is_empty() {
                let _ = shared.tx.send(Command::Held {
                    ids: written,
                    held: true,
                });
            }
            if unwritten.is_empty() {
                return;
            }
            let held = match shared
                .store
                .hold_backlogs(&unwritten, &shared.handoffs)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    store_failed(&e, "holding backlogs in the event stream failed");
                    false
                }
            };
            let _ = shared.tx.send(Command::Held {
                ids: unwritten,
                held,
            });
        });
    }

    /// A hold was written, or failed: then ingest goes on writing their deliveries, and the
    /// next busy round asks again.
    pub(super) fn held(&mut self, ids: Vec<String>, held: bool) {
        // Webhooks never tried among them look for their first events now.
        self.backlogs.first_wanted |= held;
        for id in &ids {
            if let Some(n) = self.backlogs.writing.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.backlogs.writing.remove(id);
                }
            }
            if !held {
                // Ingest writes the hold itself meanwhile (it is still unwritten); a webhook
                // never tried is asked for again at the next poll (`rehold_untried`).
                self.backlogs.forget(id);
                self.shared.metrics.backlog_held(id, false);
            } else if self.backlogs.held.get(id).is_some_and(|h| h.due) {
                self.poll_soon = true;
                // It answered while its hold was being written: its give-back waited for this,
                // and every message since is held with it, so at once (a backlog left to a
                // later poll grew to most of a benchmark run, drained 128 a poll).
                self.poll_now |= self.lanes.get(id).is_some_and(|lane| lane.proven);
            }
        }
    }

    /// Write the deliveries of held backlogs that can take some now; give back those of
    /// webhooks that answered once nothing is left after their place. `now` is the poll's: what
    /// is written is due by then, so the poll's claim takes it (written a millisecond later, it
    /// waited for the next poll, a second on).
    pub(super) async fn top_up_backlogs(&mut self, now: i64) {
        let writing = &self.backlogs.writing;
        let due: Vec<String> = self
            .backlogs
            .held
            .iter()
            .filter(|(id, h)| h.due && !writing.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            // Not read yet (created on another node): the next reload.
            if !self.targets.contains_key(&id) {
                continue;
            }
            // Disabled (before its first delivery, say): its deliveries wait in the store as
            // any disabled webhook's, every one written; or its hold was for a first delivery
            // that another came before.
            let all = self.targets[&id].webhook.disabled_at.is_some()
                || self.backlogs.held.get(&id).is_some_and(|h| h.give_back);
            let (want, release) = match self.lanes.get_mut(&id) {
                // Waits for its first delivery: `first_deliveries` writes it.
                Some(lane) if lane.untried => continue,
                // It answered: write the whole backlog (a thousand events a call, then the
                // next at once) and give it back, so that its new deliveries are handed over
                // at ingest again. Polls claim what was written, a lane's worth at a time.
                Some(lane) if lane.proven && !all => (None, true),
                // On probation with something to try it with already.
                Some(lane) if lane.busy() && !all => continue,
                // On probation with nothing out (its last delivery gave up, or none was taken
                // yet): one delivery to try it with, and, with none left after its place (after
                // that one), given back to ingest, whose next delivery tries it (and holds it
                // again). Kept held, it was never topped up again: nothing marked it due when
                // later messages came, and they waited in the stream until a restart.
                lane => {
                    // Ingest stops holding it first: the store's hold stands until the
                    // give-back commits (which reads the stream once more under the lock),
                    // whereas a hold an ingest wrote after the give-back would be one this
                    // loop does not know of.
                    if let Some(lane) = lane {
                        lane.in_stream = false;
                    }
                    self.shared.handoffs.hold_in_stream(&id, false);
                    (if all { None } else { Some(1) }, true)
                }
            };
            match self
                .shared
                .store
                .top_up_backlog(&id, want, release, now)
                .await
            {
                Ok(done) if done.released => {
                    self.backlogs.forget(&id);
                    self.shared.metrics.backlog_held(&id, false);
                }
                Ok(done) => {
                    if let Some(h) = self.backlogs.held.get_mut(&id) {
                        h.due = done.more;
                    }
                    self.poll_soon |= done.more;
                }
                Err(e) => store_failed(&e, "writing a held backlog's deliveries failed"),
            }
        }
    }

    /// Write the first deliveries of webhooks never tried whose holds are written, in a task
    /// of its own, many webhooks a transaction, leased to this node: one call at a time, again
    /// when events were committed meanwhile.
    pub(super) fn first_deliveries(&mut self) {
        let b = &mut self.backlogs;
        if !b.first_wanted || b.first_running || b.first_after.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        b.first_wanted = false;
        let mut waiting = false;
        let mut ids = Vec::new();
        for (id, lane) in &self.lanes {
            if !lane.untried {
                continue;
            }
            waiting = true;
            if b.held.contains_key(id)
                && !b.writing.contains_key(id)
                && self.targets.contains_key(id)
            {
                ids.push(id.clone());
            }
        }
        // Told of commits only while some wait.
        self.shared.handoffs.first_waiting(waiting);
        if ids.is_empty() {
            return;
        }
        b.first_running = true;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // Found something, or had nothing to read (no event after their places: a read,
            // no transaction, and the first event's commit must not wait for a back-off).
            let (mut found, mut more) = (false, false);
            // A transaction a hundred webhooks, each sent on at its commit: ingest waits for
            // one at most, and the first hundred for none of the rest.
            for chunk in ids.chunks(FIRST_PER_CALL) {
                let (now, lease_until) = (shared.clock.now_ms(), shared.lease_until());
                match shared.store.first_deliveries(chunk, now, lease_until).await {
                    Ok(done) => {
                        found |= !done.jobs.is_empty() || !done.settled.is_empty() || !done.read;
                        more |= done.more;
                        let _ = shared.tx.send(Command::FirstDeliveries(done));
                    }
                    Err(e) => {
                        // The next poll asks again.
                        store_failed(&e, "writing first deliveries from the event stream failed");
                        break;
                    }
                }
            }
            let _ = shared.tx.send(Command::FirstRoundDone { found, more });
        });
    }

    /// What `first_deliveries` wrote: sent now. Those that wait no more (given back, or
    /// tried elsewhere) go the way of any held backlog on probation.
    pub(super) fn first_delivered(&mut self, done: FirstDeliveries) {
        for id in &done.settled {
            if let Some(lane) = self.lanes.get_mut(id) {
                lane.untried = false;
            }
            self.poll_soon |= self.backlogs.give_back(id);
            self.sync_backlog(id);
        }
        self.accept(done.jobs);
    }

    /// A round of `first_deliveries` ended: again at once if some read as many events as one
    /// call may; after a round that found nothing, not again for `SOON_POLL_GAP`, however
    /// many commits come meanwhile (a webhook whose filters match nothing of a busy stream
    /// cost a write transaction a commit).
    pub(super) fn first_round_done(&mut self, found: bool, more: bool) {
        let b = &mut self.backlogs;
        b.first_running = false;
        b.first_after = (!found && !more).then(|| Instant::now() + SOON_POLL_GAP);
        b.first_wanted |= more;
    }

    /// Webhooks never tried whose hold failed (a storage fault): asked again, once a poll.
    pub(super) fn rehold_untried(&mut self) {
        let b = &self.backlogs;
        let unheld: Vec<String> = self
            .lanes
            .iter()
            .filter(|(id, l)| {
                l.untried && !b.held.contains_key(*id) && !b.writing.contains_key(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in unheld {
            self.sync_backlog(&id);
        }
    }

    /// When `first_deliveries` may run next, if it waits for that.
    pub(super) fn first_wake(&self) -> Option<Instant> {
        let b = &self.backlogs;
        (b.first_wanted && !b.first_running).then(|| b.first_after.unwrap_or_else(Instant::now))
    }
}
