//! Lanes and limits: one lane per webhook holding its queue (fresh deliveries ahead of retries),
//! its in-flight and per-second limits, and its circuit breaker; pumping lanes into sends, and
//! what a finished send does to its lane (the breaker opens, closes, or probes).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{warn, Instrument};

use super::attempt::send_and_record;
use super::{store_failed, Command, Completion, Dispatcher, Pump, SendResult, PROBATION_QUEUE};
use crate::metrics::BreakerState;
use crate::store::{DeliveryJob, NextStep, Ordering, Webhook, WebhookHealth};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Breaker {
    Closed,
    Open {
        until: i64,
    },
    /// One probe decides.
    HalfOpen,
}

impl Breaker {
    pub(super) fn state(self) -> BreakerState {
        match self {
            Breaker::Closed => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

pub(super) struct Lane {
    pub(super) fresh: VecDeque<DeliveryJob>,
    pub(super) retries: VecDeque<DeliveryJob>,
    /// Deliveries queued or in flight here (a claim can return what a handoff already gave).
    pub(super) known: HashSet<String>,
    pub(super) in_flight: u32,
    /// An attempt of it has had no answer for `slow_attempt_after`: one attempt at a time, on
    /// probation slots, until its subscriber answers (`Dispatcher::went_slow`).
    pub(super) slow: bool,
    /// When it last started an attempt: when slots are scarce, the lane that waited longest
    /// goes first.
    pub(super) last_started: Option<Instant>,
    /// Conversations with a delivery in flight (ordered webhooks).
    pub(super) busy: HashSet<String>,
    pub(super) tokens: f64,
    pub(super) refilled: Instant,
    pub(super) breaker: Breaker,
    /// Its subscriber answered the last attempt (this node's, or the last one stored when the
    /// lane was made): it may use the shared slots. Until then (and after an attempt it did not
    /// answer) it is on probation, one attempt at a time.
    pub(super) proven: bool,
    /// Its new deliveries are left in the store at ingest (`Handoffs`): on probation and full.
    pub(super) held: bool,
    /// Ingest holds its backlog in the event stream (`Handoffs::in_stream`): on probation with
    /// an attempt out or queued.
    pub(super) in_stream: bool,
    /// Never tried (no attempt stored, none made here): its backlog is held in the stream
    /// from the start, and its first delivery written from there (`first_deliveries`), so
    /// the first message to a thousand new webhooks costs its ingest nothing for them.
    pub(super) untried: bool,
}

impl Lane {
    pub(super) fn new(health: &WebhookHealth, now: i64) -> Self {
        Lane {
            fresh: VecDeque::new(),
            retries: VecDeque::new(),
            known: HashSet::new(),
            in_flight: 0,
            slow: false,
            last_started: None,
            busy: HashSet::new(),
            tokens: 1.0,
            refilled: Instant::now(),
            // A webhook that answered its last attempt before a restart (or on another node)
            // is not on probation: only those that did not, or were never tried, are tried
            // together after a start.
            proven: health.answered,
            held: false,
            in_stream: false,
            untried: health.never_tried(),
            breaker: match health.breaker_open_until {
                Some(until) if until > now => Breaker::Open { until },
                Some(_) => Breaker::HalfOpen,
                None => Breaker::Closed,
            },
        }
    }

    /// Take every queued job out; their (id, lease) pairs, to give back.
    pub(super) fn drain(&mut self) -> Vec<(String, i64)> {
        let leases: Vec<(String, i64)> = self
            .fresh
            .drain(..)
            .chain(self.retries.drain(..))
            .map(|j| (j.delivery_id, j.lease_until))
            .collect();
        for (id, _) in &leases {
            self.known.remove(id);
        }
        leases
    }

    pub(super) fn queued(&self) -> usize {
        self.fresh.len() + self.retries.len()
    }

    /// On probation (or slow) with its one attempt out: nothing of it can start before that
    /// attempt ends.
    fn waits_for_its_attempt(&self) -> bool {
        (!self.proven || self.slow) && self.in_flight > 0
    }

    /// A delivery of it is queued or in flight.
    pub(super) fn busy(&self) -> bool {
        self.in_flight > 0 || self.queued() > 0
    }

    /// Whether polls claim no more for it now: it holds plenty already (a slow subscriber's
    /// backlog must not fill every claim while the others' retries wait), or it is full on
    /// probation.
    pub(super) fn full(&self, webhook: &Webhook) -> bool {
        if self.proven {
            self.queued() >= lane_capacity(webhook)
        } else {
            self.full_on_probation()
        }
    }

    /// On probation with `PROBATION_QUEUE` deliveries queued or in flight: it takes no more.
    pub(super) fn full_on_probation(&self) -> bool {
        !self.proven && self.queued() + self.in_flight as usize >= PROBATION_QUEUE
    }
}

/// How many deliveries a lane that has answered holds before polls stop claiming more for it.
pub(super) fn lane_capacity(webhook: &Webhook) -> usize {
    let by_flight = webhook
        .max_in_flight
        .map_or(128, |m| (m as usize * 4).max(8));
    let by_rate = webhook
        .max_per_second
        .map_or(usize::MAX, |r| ((r * 2.0).ceil() as usize).max(2));
    by_flight.min(by_rate)
}

impl Dispatcher {
    /// Hold the lane's new deliveries in the store at ingest while it is full on probation;
    /// let them come again once it has room or has left probation.
    pub(super) fn sync_handoff(&mut self, webhook_id: &str) {
        let Some(lane) = self.lanes.get_mut(webhook_id) else {
            return;
        };
        let hold = lane.full_on_probation();
        if hold != lane.held {
            lane.held = hold;
            self.shared.handoffs.hold(webhook_id, hold);
            // What it left in the store meanwhile is claimed by a poll; at once if it left
            // probation (its subscriber answered), as each delivery since waits for it.
            self.poll_soon |= !hold;
            self.poll_now |= !hold && lane.proven;
        }
        self.sync_backlog(webhook_id);
    }

    /// The subscriber of a lane on probation (or slow) answered: the lane uses the shared slots
    /// from now on, and what it left in the store comes back at once.
    pub(super) fn left_probation(&mut self, webhook_id: &str) {
        let Some(lane) = self.lanes.get_mut(webhook_id) else {
            return;
        };
        let was_slow = std::mem::take(&mut lane.slow);
        if lane.proven {
            if was_slow {
                self.shared.metrics.probation(webhook_id, false);
            }
            return;
        }
        lane.proven = true;
        self.shared.metrics.probation(webhook_id, false);
        self.shared.handoffs.probation(webhook_id, false);
        if self.backlogs.due(webhook_id) {
            self.poll_soon = true;
            self.poll_now = true;
        }
        self.sync_handoff(webhook_id);
    }

    /// An attempt on a shared slot has had no answer for `slow_attempt_after`. Its slot becomes
    /// a probation slot while the probation pool has room (so its count, and the descriptors,
    /// stay bounded), and its lane sends one attempt at a time, on probation slots, until its
    /// subscriber answers. Its backlog is not held in the stream: a subscriber that is only
    /// slow answers soon. However many subscribers that answered start hanging at once, the
    /// shared slots are free again after that long, not after their timeouts.
    pub(super) fn went_slow(&mut self, webhook_id: &str, delivery_id: String) {
        if self.probing < self.probation_cap {
            self.in_flight -= 1;
            self.probing += 1;
            self.shared.metrics.in_flight(-1, false);
            self.shared.metrics.in_flight(1, true);
            self.moved.insert(delivery_id);
        }
        if let Some(lane) = self.lanes.get_mut(webhook_id) {
            if !lane.slow {
                lane.slow = true;
                self.shared.metrics.probation(webhook_id, true);
            }
        }
    }

    /// Start what every lane may start now, one delivery per lane per round, so no lane takes
    /// every free slot. Returns when a rate-limited lane can go on.
    pub(super) fn pump_all(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        // Only lanes with something queued (with thousands of idle webhooks, collecting every
        // id on each round of the loop was a measurable share of the server's CPU) that can
        // start it: a thousand hanging webhooks with a second delivery queued behind their
        // attempt took 2–7 ms a round, and the healthy webhook's deliveries waited 300 ms.
        let mut want_shared = 0;
        let mut active: Vec<(Option<Instant>, &String)> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.queued() > 0 && !lane.waits_for_its_attempt())
            .map(|(id, lane)| {
                want_shared += usize::from(lane.proven && !lane.slow);
                (lane.last_started, id)
            })
            .collect();
        // Fewer shared slots free than lanes that want one: those that waited longest first.
        // (In the map's order, the same few lanes took every slot that came free: a healthy
        // subscriber's deliveries waited behind those of subscribers that had started to hang.)
        if want_shared > self.concurrency.saturating_sub(self.in_flight) {
            active.sort_unstable_by_key(|(started, _)| *started);
        }
        let mut active: Vec<String> = active.into_iter().map(|(_, id)| id.clone()).collect();
        while !active.is_empty() {
            let mut started = Vec::with_capacity(active.len());
            for id in active {
                match self.pump_one(&id) {
                    Pump::Started => started.push(id),
                    Pump::WaitUntil(at) => wake = Some(wake.map_or(at, |w| w.min(at))),
                    Pump::Idle => {}
                }
            }
            active = started;
        }
        wake
    }

    /// Start at most one delivery of this lane.
    pub(super) fn pump_one(&mut self, webhook_id: &str) -> Pump {
        let Some(target) = self.targets.get(webhook_id).cloned() else {
            return Pump::Idle;
        };
        let now = self.shared.clock.now_ms();
        let Some(lane) = self.lanes.get_mut(webhook_id) else {
            return Pump::Idle;
        };
        if lane.fresh.is_empty() && lane.retries.is_empty() {
            return Pump::Idle;
        }
        let webhook = &target.webhook;
        if webhook.disabled_at.is_some() {
            let leases = lane.drain();
            self.release(leases);
            return Pump::Idle;
        }
        match lane.breaker {
            Breaker::Open { until } if now < until => {
                // Deliveries wait in the store, not here: the breaker may stay open a while.
                let leases = lane.drain();
                self.release(leases);
                return Pump::Idle;
            }
            Breaker::Open { .. } => {
                lane.breaker = Breaker::HalfOpen;
                self.shared
                    .metrics
                    .breaker(webhook_id, BreakerState::HalfOpen);
            }
            _ => {}
        }
        let ordered = webhook.ordering == Ordering::Conversation;
        {
            let shared_slot = lane.proven && !lane.slow;
            let slot_free = if shared_slot {
                self.in_flight < self.concurrency
            } else {
                lane.in_flight == 0 && self.probing < self.probation_cap
            };
            if !slot_free {
                return Pump::Idle;
            }
            if webhook
                .max_in_flight
                .is_some_and(|max| lane.in_flight >= max)
                || (lane.breaker == Breaker::HalfOpen && lane.in_flight >= 1)
            {
                return Pump::Idle;
            }
            let startable = |job: &DeliveryJob| {
                !ordered
                    || job
                        .conversation_id
                        .as_ref()
                        .is_none_or(|c| !lane.busy.contains(c))
            };
            let (queue, index) = match lane.fresh.iter().position(startable) {
                Some(i) => (&mut lane.fresh, i),
                None => match lane.retries.iter().position(startable) {
                    Some(i) => (&mut lane.retries, i),
                    None => return Pump::Idle,
                },
            };
            if let Some(rate) = webhook.max_per_second {
                let capacity = rate.max(1.0);
                let elapsed = lane.refilled.elapsed().as_secs_f64();
                lane.tokens = (lane.tokens + elapsed * rate).min(capacity);
                lane.refilled = Instant::now();
                if lane.tokens < 1.0 {
                    let wait = Duration::try_from_secs_f64((1.0 - lane.tokens) / rate)
                        .unwrap_or(Duration::MAX)
                        .min(Duration::from_secs(3600));
                    return Pump::WaitUntil(Instant::now() + wait);
                }
                lane.tokens -= 1.0;
            }
            let job = queue.remove(index).expect("index from position");
            if ordered {
                if let Some(c) = &job.conversation_id {
                    lane.busy.insert(c.clone());
                }
            }
            lane.in_flight += 1;
            lane.last_started = Some(Instant::now());
            let on_probation = !shared_slot;
            if on_probation {
                self.probing += 1;
            } else {
                self.in_flight += 1;
            }
            self.shared.metrics.in_flight(1, on_probation);
            let shared = self.shared.clone();
            let target = target.clone();
            let span = tracing::info_span!("delivery", delivery_id = %job.delivery_id, webhook_id = %job.webhook_id, event_id = %job.event_id);
            self.sends.spawn(
                on_probation,
                async move {
                    let done = send_and_record(&shared, &target, job, on_probation).await;
                    let _ = shared.tx.send(Command::Done(done));
                }
                .instrument(span),
            );
        }
        Pump::Started
    }

    pub(super) async fn finish(&mut self, done: Completion) {
        let probation_slot = done.on_probation || self.moved.remove(&done.delivery_id);
        if probation_slot {
            self.probing -= 1;
        } else {
            self.in_flight -= 1;
        }
        self.shared.metrics.in_flight(-1, probation_slot);
        // The last poll claimed nothing for lack of room: a shared slot is free now (also when
        // the webhook is gone), so what waits in the store (a backlog given back) is claimed
        // at the next soon poll, not at the next tick. (A probation slot frees no such room.)
        if !probation_slot {
            self.poll_soon |= std::mem::take(&mut self.claim_starved);
        }
        let now = self.shared.clock.now_ms();
        let Some(lane) = self.lanes.get_mut(&done.webhook_id) else {
            return;
        };
        lane.in_flight -= 1;
        lane.known.remove(&done.delivery_id);
        if let Some(c) = &done.conversation_id {
            lane.busy.remove(c);
        }
        // The last poll left it out as full: with room again, the same.
        if self.full_at_poll.contains(&done.webhook_id)
            && self
                .targets
                .get(&done.webhook_id)
                .is_some_and(|t| !lane.full(&t.webhook))
        {
            self.full_at_poll.remove(&done.webhook_id);
            self.poll_soon = true;
        }
        let SendResult::Attempted {
            next,
            health,
            answered,
        } = done.result
        else {
            self.sync_handoff(&done.webhook_id);
            return;
        };
        let was_proven = lane.proven;
        // An answered attempt on probation (or slow) took its lane off probation when the answer
        // came (`left_probation`); an attempt of the lane that ended since (a timeout) may have
        // put it back, which this older answer must not undo.
        let already_applied = (done.on_probation || done.slow) && answered;
        if !already_applied && lane.proven != answered {
            lane.proven = answered;
            self.shared
                .handoffs
                .probation(&done.webhook_id, !lane.proven);
            self.shared
                .metrics
                .probation(&done.webhook_id, !lane.proven || lane.slow);
        }
        // It answered, or one of its deliveries left the queue: a held backlog may give more.
        if (answered || !matches!(next, NextStep::RetryAt(_)))
            && self.backlogs.due(&done.webhook_id)
        {
            self.poll_soon = true;
            // It left probation: every delivery since it was held waits for this poll.
            self.poll_now |= answered && !was_proven;
        }
        let success = next == NextStep::Delivered;
        let mut breaker_change = None;
        if success {
            if lane.breaker != Breaker::Closed {
                lane.breaker = Breaker::Closed;
                breaker_change = Some(None);
            }
        } else if lane.breaker == Breaker::HalfOpen
            || (lane.breaker == Breaker::Closed
                && health.consecutive_failures >= self.breaker_threshold)
        {
            let until = now + self.breaker_cooldown.as_millis() as i64;
            lane.breaker = Breaker::Open { until };
            breaker_change = Some(Some(until));
            warn!(webhook_id = %done.webhook_id, failures = health.consecutive_failures, "circuit breaker open");
        }
        let state = lane.breaker.state();
        if let Some(open_until) = breaker_change {
            let queued = if open_until.is_some() {
                lane.drain()
            } else {
                vec![]
            };
            // Saved in order, before the queued deliveries are given back: no other node may
            // claim them while the breaker is open.
            if let Err(e) = self
                .shared
                .store
                .set_breaker(&done.webhook_id, open_until)
                .await
            {
                store_failed(&e, "saving the breaker state failed");
            }
            self.release(queued);
        }
        // Set after the save: once the metric shows a state, the API shows it too (unless
        // the save failed, which is logged above).
        self.shared.metrics.breaker(&done.webhook_id, state);
        self.sync_handoff(&done.webhook_id);
        // Ordered: the conversation's next delivery may go now, unless this one will be retried.
        let ordered = self
            .targets
            .get(&done.webhook_id)
            .is_some_and(|t| t.webhook.ordering == Ordering::Conversation);
        if let (true, Some(conversation), false) = (
            ordered,
            done.conversation_id,
            matches!(next, NextStep::RetryAt(_)),
        ) {
            let shared = self.shared.clone();
            let webhook_id = done.webhook_id;
            tokio::spawn(async move {
                let now = shared.clock.now_ms();
                match shared
                    .store
                    .claim_conversation_head(&webhook_id, &conversation, now, shared.lease_until())
                    .await
                {
                    Ok(Some(job)) => {
                        let _ = shared.tx.send(Command::Jobs(vec![job]));
                    }
                    Ok(None) => {}
                    Err(e) => store_failed(&e, "claiming the conversation's next delivery failed"),
                }
            });
        }
    }
}
