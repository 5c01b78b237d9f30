//! Claiming and leases: deliveries handed over after their commit or claimed by a poll, queued
//! in their lanes or parked until their webhook is read, and leases given back for what this
//! node will not send now.

use super::lanes::Lane;
use super::{store_failed, Dispatcher};
use crate::store::DeliveryJob;

impl Dispatcher {
    pub(super) fn accept(&mut self, jobs: Vec<DeliveryJob>) {
        let (known, unknown): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .partition(|j| self.targets.contains_key(&j.webhook_id));
        if !unknown.is_empty() {
            // A webhook this node has not read yet (created on another node): read the
            // webhooks, then take these up.
            self.parked.extend(unknown);
            self.shared.webhooks_changed();
        }
        self.accept_or_release(known);
    }

    /// Queue jobs in their lanes; give back those whose webhook is gone, and those of a lane on
    /// probation beyond what it holds.
    pub(super) fn accept_or_release(&mut self, jobs: Vec<DeliveryJob>) {
        let now = self.shared.clock.now_ms();
        let mut orphans = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        for job in jobs {
            let Some(target) = self.targets.get(&job.webhook_id) else {
                orphans.push((job.delivery_id, job.lease_until));
                continue;
            };
            let lane = self
                .lanes
                .entry(job.webhook_id.clone())
                .or_insert_with(|| Lane::new(&target.webhook.health, now));
            if lane.full_on_probation() && !lane.known.contains(&job.delivery_id) {
                // Its subscriber has not answered: the rest of its backlog waits in the store.
                orphans.push((job.delivery_id, job.lease_until));
                continue;
            }
            if touched.last() != Some(&job.webhook_id) {
                touched.push(job.webhook_id.clone());
            }
            if !lane.known.insert(job.delivery_id.clone()) {
                // Claimed again while queued here (its old lease ran out): keep the newer lease.
                if let Some(queued) = lane
                    .fresh
                    .iter_mut()
                    .chain(lane.retries.iter_mut())
                    .find(|q| q.delivery_id == job.delivery_id)
                {
                    queued.lease_until = queued.lease_until.max(job.lease_until);
                }
                continue;
            }
            // Tried now: its next deliveries come as any webhook's on probation.
            lane.untried = false;
            if job.is_retry {
                lane.retries.push_back(job);
            } else {
                lane.fresh.push_back(job);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            self.sync_handoff(&id);
        }
        self.release(orphans);
    }

    pub(super) fn release(&self, leases: Vec<(String, i64)>) {
        if leases.is_empty() {
            return;
        }
        let store = self.shared.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.release_leases_of(&leases).await {
                store_failed(&e, "releasing leases failed (they expire on their own)");
            }
        });
    }
}
