//! The dispatcher: sends deliveries, records every attempt, and schedules retries with
//! exponential backoff and jitter. New deliveries arrive in memory right after their commit
//! (already leased to this node), so the happy path never waits for a poll; a poller picks up
//! due retries and deliveries whose lease expired (a crashed sender's work). The store stays
//! the source of truth.
//!
//! Each webhook has a lane: its limits (`maxInFlight`, `maxPerSecond`), its circuit breaker,
//! and its queue, fresh deliveries ahead of retries, so one slow or failing subscriber cannot
//! starve the others and retries cannot starve fresh traffic. One task owns every lane; sends
//! run as their own tasks and report back.
//!
//! This file holds that task's loop and its handle; the concerns are apart: `claims` (what is
//! handed over or claimed, and leases given back), `lanes` (queues, limits, the breaker),
//! `attempt` (sending and recording one attempt), `schedule` (the retry policy, polling,
//! pruning).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use crate::config::Config;
use crate::domain::time::Clock;
use crate::keys::SigningKeys;
use crate::metrics::Metrics;
use crate::ssrf::TargetPolicy;
use crate::store::{DeliveryJob, Handoffs, NextStep, Store, StoreError, WebhookHealth};

mod attempt;
mod backlog;
mod claims;
mod lanes;
mod schedule;
mod sends;

use attempt::{Clients, Target};
use lanes::{Breaker, Lane};
use sends::Sends;

pub use schedule::RetryPolicy;

/// A lease is renewed before sending when less than the timeout plus this is left.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Webhooks on probation may have this many times `dispatcher_concurrency` attempts in flight
/// in all, one each (and the slow attempts of webhooks that answered, moved there).
pub const PROBATION_FACTOR: usize = 4;

/// A lane on probation holds at most this many deliveries, queued or in flight: the rest of
/// its backlog waits in the store (not leased at ingest, and given back when a claim brings
/// more), so a subscriber that hangs costs this node no memory for its backlog.
pub const PROBATION_QUEUE: usize = 16;
/// A poll asked for because a lane on probation has room again comes at most this soon
/// after the last one.
const SOON_POLL_GAP: Duration = Duration::from_millis(100);
/// A failed read of the webhooks is tried again after this.
const RELOAD_RETRY: Duration = Duration::from_secs(1);
/// Webhook settings are re-read this often (other nodes may have changed them).
const WEBHOOK_REFRESH: Duration = Duration::from_secs(10);
/// Retention runs at most this far apart (more often for short retention).
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Talks to the dispatcher from the rest of the process.
#[derive(Clone)]
pub struct DispatchHandle {
    shared: Arc<Shared>,
}

impl DispatchHandle {
    /// The webhooks whose new deliveries this dispatcher does not take at ingest now.
    pub fn handoffs(&self) -> Arc<Handoffs> {
        self.shared.handoffs.clone()
    }

    /// Deliveries just committed (and leased to this node): send them now.
    pub fn hand_off(&self, jobs: Vec<DeliveryJob>) {
        if !jobs.is_empty() {
            // If the dispatcher is gone the leases expire and the next run sends them.
            let _ = self.shared.tx.send(Command::Jobs(jobs));
        }
    }

    /// A webhook was created, changed or deleted (and that is committed): no attempt starts
    /// after this returns with what the dispatcher read before.
    pub fn webhooks_changed(&self) {
        self.shared.webhooks_changed();
    }
}

/// What one lane did in a round of `pump_all`.
enum Pump {
    Started,
    /// Rate-limited until then.
    WaitUntil(Instant),
    /// Nothing it may start now.
    Idle,
}

enum Command {
    Jobs(Vec<DeliveryJob>),
    WebhooksChanged,
    /// The subscriber of a webhook on probation answered an attempt, which is being recorded.
    Answered(String),
    /// An attempt on a shared slot has had no answer for `slow_attempt_after`
    /// (`Dispatcher::went_slow`).
    Slow {
        webhook_id: String,
        delivery_id: String,
    },
    Done(Completion),
    /// The holds of these webhooks' backlogs were written (`held`), or failed.
    Held {
        ids: Vec<String>,
        held: bool,
    },
    /// What a call of `Backlogs::first_deliveries` did (`Dispatcher::first_delivered`).
    FirstDeliveries(crate::store::FirstDeliveries),
    /// A round of such calls ended: whether it found anything (or had nothing to read), and
    /// whether some read as many events as one call may (`Dispatcher::first_round_done`).
    FirstRoundDone {
        found: bool,
        more: bool,
    },
    /// This node committed events (told only while webhooks wait for their first delivery).
    EventsCommitted,
}

struct Completion {
    /// The attempt started on a probation slot rather than a shared one (a slow one may have
    /// moved to one since: `Dispatcher::moved`).
    on_probation: bool,
    /// It told the dispatcher it was slow (`Command::Slow`), and an answer, if it got one
    /// (`Command::Answered`).
    slow: bool,
    webhook_id: String,
    delivery_id: String,
    conversation_id: Option<String>,
    result: SendResult,
}

enum SendResult {
    /// Another node holds the delivery now; nothing was sent.
    Lost,
    Attempted {
        next: NextStep,
        health: WebhookHealth,
        /// The subscriber answered (any HTTP status), rather than timing out or refusing the
        /// connection: its webhook leaves probation, or enters it when it did not.
        answered: bool,
    },
}

/// Everything the send tasks share.
struct Shared {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: Arc<SigningKeys>,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Command>,
    /// Lanes on probation that hold enough: their new deliveries wait in the store.
    handoffs: Arc<Handoffs>,
    retry: RetryPolicy,
    lease: Duration,
    timeout: Duration,
    /// An attempt on a shared slot unanswered this long moves to a probation slot.
    slow_after: Duration,
    auto_disable_after: Duration,
    app_id: Option<Arc<str>>,
    /// The runtime that serves requests and writes the store (attempts run on others).
    main: tokio::runtime::Handle,
    /// How many times webhooks were changed (counted before the command is sent).
    changes: AtomicU64,
}

impl Shared {
    fn lease_until(&self) -> i64 {
        self.clock.now_ms() + self.lease.as_millis() as i64
    }

    /// Counted at once, so that the dispatcher reads the webhooks again before it starts
    /// anything, even a delivery it claims from the store before the command reaches it.
    fn webhooks_changed(&self) {
        self.changes.fetch_add(1, AtomicOrdering::SeqCst);
        let _ = self.tx.send(Command::WebhooksChanged);
    }
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    targets: HashMap<String, Arc<Target>>,
    lanes: HashMap<String, Lane>,
    /// Claimed deliveries of webhooks not read yet, until the next reload.
    parked: Vec<DeliveryJob>,
    /// `Shared::changes` when `targets` were read.
    changes_read: u64,
    /// The last read of the webhooks failed: not again before then.
    reload_after: Option<Instant>,
    /// Attempts in flight for webhooks that have answered (at most `concurrency`).
    in_flight: usize,
    concurrency: usize,
    /// Attempts in flight for webhooks on probation (not answered yet, or whose last attempt
    /// got no answer): one per webhook, at most `probation_cap` in all. They do not take the
    /// slots of webhooks that answer, so a subscriber that hangs delays no one else.
    probing: usize,
    probation_cap: usize,
    /// Attempts that started on a shared slot and hold a probation slot now (they were slow),
    /// by delivery id.
    moved: std::collections::HashSet<String>,
    /// A lane that held its deliveries in the store takes them again: poll soon, not at the
    /// next tick.
    poll_soon: bool,
    /// A held backlog's webhook answered: poll now (its backlog is written and given back),
    /// not after `SOON_POLL_GAP`.
    poll_now: bool,
    /// Webhooks whose backlog is held in the event stream.
    backlogs: backlog::Backlogs,
    /// Lanes the last poll claimed nothing for, as they held plenty (`Lane::full`).
    full_at_poll: std::collections::HashSet<String>,
    /// The last poll claimed nothing: the lanes held as much as the node sends soon.
    claim_starved: bool,
    /// HTTP clients by the private networks their webhooks may reach.
    clients: HashMap<Vec<ipnet::IpNet>, (Clients, TargetPolicy)>,
    /// Where attempts run (see `Sends`): those of webhooks on probation on a runtime of their
    /// own.
    sends: Sends,
    poll_interval: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    retention: Duration,
    base_policy: TargetPolicy,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Arc<SigningKeys>,
        metrics: Arc<Metrics>,
        base_policy: TargetPolicy,
    ) -> anyhow::Result<(Dispatcher, DispatchHandle)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handoffs = Arc::new(Handoffs::default());
        let jobs = tx.clone();
        handoffs.hand_off_to(move |committed| {
            // If the dispatcher is gone the leases expire and the next run sends them.
            let _ = jobs.send(Command::Jobs(committed));
        });
        let told = tx.clone();
        handoffs.on_events_committed(move || {
            let _ = told.send(Command::EventsCommitted);
        });
        let shared = Arc::new(Shared {
            store,
            clock,
            keys,
            metrics,
            tx: tx.clone(),
            handoffs: handoffs.clone(),
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                jitter: config.retry_jitter,
            },
            lease: config.delivery_lease,
            timeout: config.delivery_timeout,
            slow_after: config.slow_attempt_after,
            auto_disable_after: config.auto_disable_after,
            app_id: config.app_id.as_deref().map(Arc::from),
            main: tokio::runtime::Handle::current(),
            changes: AtomicU64::new(0),
        });
        Ok((
            Dispatcher {
                shared: shared.clone(),
                rx,
                targets: HashMap::new(),
                lanes: HashMap::new(),
                parked: Vec::new(),
                changes_read: 0,
                reload_after: None,
                in_flight: 0,
                concurrency: config.dispatcher_concurrency,
                probing: 0,
                probation_cap: PROBATION_FACTOR * config.dispatcher_concurrency,
                moved: Default::default(),
                poll_soon: false,
                poll_now: false,
                backlogs: backlog::Backlogs::default(),
                full_at_poll: Default::default(),
                claim_starved: false,
                clients: HashMap::new(),
                sends: Sends::start()?,
                poll_interval: config.poll_interval,
                breaker_threshold: config.breaker_threshold,
                breaker_cooldown: config.breaker_cooldown,
                retention: config.retention,
                base_policy,
            },
            DispatchHandle { shared },
        ))
    }

    /// The HTTP clients for webhooks that may reach `networks`: one pair per distinct list,
    /// shared by every webhook with that list (a client holds its own TLS roots and pool: one
    /// per webhook cost about 100 KiB each, with thousands of webhooks hundreds of MiB).
    fn clients_for(&mut self, networks: &[ipnet::IpNet]) -> (Clients, TargetPolicy) {
        if let Some(found) = self.clients.get(networks) {
            return found.clone();
        }
        let made = self.make_clients(networks);
        self.clients.insert(networks.to_vec(), made.clone());
        made
    }

    fn make_clients(&self, networks: &[ipnet::IpNet]) -> (Clients, TargetPolicy) {
        let policy = self.base_policy.with_networks(networks);
        let client = || {
            let builder = reqwest::Client::builder()
                .timeout(self.shared.timeout)
                .connect_timeout(self.shared.timeout.min(Duration::from_secs(5)))
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true);
            policy
                .client(builder)
                .expect("the HTTP client builds with these settings")
        };
        let clients = Clients {
            answered: client(),
            probation: client(),
        };
        (clients, policy)
    }

    /// Re-read every webhook, then take up the deliveries that waited for that (those of a
    /// webhook this node had not read yet).
    async fn reload(&mut self) {
        let changes = self.shared.changes.load(AtomicOrdering::SeqCst);
        let webhooks = match self.shared.store.list_webhooks().await {
            Ok(w) => w,
            Err(e) => {
                store_failed(&e, "reading webhooks failed");
                // Not at every round while the store fails: deliveries start meanwhile with
                // the settings read before.
                self.reload_after = Some(Instant::now() + RELOAD_RETRY);
                return;
            }
        };
        self.reload_after = None;
        if webhooks.iter().any(|w| w.legacy_signature) {
            if let Err(e) = self.shared.keys.ensure_rsa().await {
                warn!(error = format!("{e:#}"), "loading the RSA key failed");
            }
        }
        let now = self.shared.clock.now_ms();
        let mut targets = HashMap::with_capacity(webhooks.len());
        let (mut untried, mut untried_no_more) = (Vec::new(), Vec::new());
        for webhook in webhooks {
            let (clients, policy) = self.clients_for(&webhook.allowed_networks);
            let (metrics, handoffs) = (&self.shared.metrics, &self.shared.handoffs);
            let lane = self.lanes.entry(webhook.id.clone()).or_insert_with(|| {
                let mut lane = Lane::new(&webhook.health, now);
                metrics.probation(&webhook.id, !lane.proven);
                handoffs.probation(&webhook.id, !lane.proven);
                lane.untried &= webhook.disabled_at.is_none();
                if lane.untried {
                    untried.push(webhook.id.clone());
                }
                lane
            });
            // Disabled (before its first delivery, say): its deliveries wait in the store, as
            // any disabled webhook's; its held backlog is written and given back by a top-up.
            // Tried by another node meanwhile (its stored health says so): on probation as any.
            let tried = !webhook.health.never_tried();
            if (lane.untried && tried) || webhook.disabled_at.is_some() {
                lane.untried = false;
                untried_no_more.push(webhook.id.clone());
            }
            // Another node may have opened or closed the breaker.
            lane.breaker = match (lane.breaker, webhook.health.breaker_open_until) {
                (_, Some(until)) if until > now => Breaker::Open { until },
                (Breaker::Open { .. }, None) => Breaker::Closed,
                (state, _) => state,
            };
            self.shared
                .metrics
                .breaker(&webhook.id, lane.breaker.state());
            if webhook.backlog_after_seq.is_some() {
                self.backlogs.seen_held(&webhook.id);
                self.shared.metrics.backlog_held(&webhook.id, true);
            }
            targets.insert(
                webhook.id.clone(),
                Arc::new(Target::new(webhook, clients, &policy)),
            );
        }
        let gone: Vec<String> = self
            .lanes
            .keys()
            .filter(|id| !targets.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut lane) = self.lanes.remove(&id) {
                let leases = lane.drain();
                self.release(leases);
            }
            // Off probation first: a delivery committed in between must not hold it again.
            self.shared.handoffs.probation(&id, false);
            self.shared.handoffs.hold(&id, false);
            self.shared.handoffs.hold_in_stream(&id, false);
            self.backlogs.forget(&id);
            self.shared.metrics.forget_webhook(&id);
        }
        self.targets = targets;
        self.changes_read = changes;
        // Held in the stream from the start, for their first delivery from there.
        for id in &untried {
            self.sync_backlog(id);
        }
        for id in &untried_no_more {
            if self.targets[id].webhook.disabled_at.is_some() {
                self.poll_soon |= self.backlogs.due(id);
            }
            self.sync_backlog(id);
        }
        self.backlogs.first_wanted |= !untried.is_empty();
        let parked = std::mem::take(&mut self.parked);
        self.accept_or_release(parked);
    }

    /// Read the webhooks again if one changed since they were read. Called before anything
    /// starts: a delivery claimed from the store may have been stored after a change (a secret
    /// rotated, then a message came) whose command is still queued behind.
    async fn catch_up(&mut self) {
        let changed = self.shared.changes.load(AtomicOrdering::SeqCst) != self.changes_read;
        if changed && self.reload_after.is_none_or(|at| Instant::now() >= at) {
            self.reload().await;
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Jobs(jobs) => self.accept(jobs),
            Command::Answered(webhook_id) => self.left_probation(&webhook_id),
            Command::Slow {
                webhook_id,
                delivery_id,
            } => self.went_slow(&webhook_id, delivery_id),
            Command::Done(done) => self.finish(done).await,
            Command::Held { ids, held } => self.held(ids, held),
            Command::FirstDeliveries(done) => self.first_delivered(done),
            Command::FirstRoundDone { found, more } => self.first_round_done(found, more),
            // Events were committed on this node while webhooks wait for their first.
            Command::EventsCommitted => self.backlogs.first_wanted = true,
            // Counted when it was sent: read at the top of the next round (`catch_up`), before
            // anything starts. A burst of changes (an operator creating 200 webhooks) is one
            // read, as every change of it was counted by then; deliveries queued behind it (or
            // parked for a webhook not read yet) are taken up after that read.
            Command::WebhooksChanged => {}
        }
    }

    /// Runs until the process stops.
    pub async fn run(mut self) {
        self.reload().await;
        // Another node queued work (PostgreSQL NOTIFY): poll now rather than at the next tick.
        let mut wakeups = self.shared.store.work_notifications();
        let mut next_poll = Instant::now();
        let mut last_poll = Instant::now();
        let mut next_refresh = Instant::now() + WEBHOOK_REFRESH;
        let retention_every =
            (self.retention / 4).clamp(Duration::from_millis(100), RETENTION_EVERY);
        let mut next_retention = Instant::now() + retention_every;
        loop {
            self.catch_up().await;
            let wake = self.pump_all().map_or(next_poll, |w| w.min(next_poll));
            let wake = self.first_wake().map_or(wake, |w| w.min(wake));
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
                Some(()) = async {
                    match wakeups.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => next_poll = Instant::now(),
            }
            // What was just accepted starts before this round's awaited work (a reload, a poll):
            // with a thousand new webhooks held at once, a healthy one's first attempt waited
            // for such work (30 ms).
            if self.backlogs.holding() {
                self.catch_up().await;
                self.pump_all();
            }
            self.hold_backlogs();
            self.first_deliveries();
            let now = Instant::now();
            if std::mem::take(&mut self.poll_soon) {
                // At most one such poll per SOON_POLL_GAP, however many lanes open.
                next_poll = next_poll.min(last_poll + SOON_POLL_GAP);
            }
            if std::mem::take(&mut self.poll_now) {
                next_poll = now;
            }
            if now >= next_refresh {
                self.reload().await;
                next_refresh = now + WEBHOOK_REFRESH;
            }
            if now >= next_poll {
                self.poll().await;
                last_poll = Instant::now();
                next_poll = last_poll + self.poll_interval;
            }
            if now >= next_retention {
                self.prune();
                next_retention = now + retention_every;
            }
        }
    }
}

/// A store call failed. A storage fault (a full disk, a lock) is logged by the store once per
/// episode, so here only at debug level; anything else is a warning.
pub(super) fn store_failed(e: &StoreError, what: &str) {
    if e.is_fault() {
        tracing::debug!(error = %e, "{what}");
    } else {
        warn!(error = %e, "{what}");
    }
}
