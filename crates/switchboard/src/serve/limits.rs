//! What outsiders may hold: connections (in total, and per client address) and request-body
//! bytes being received (in total, and per client address). Past a connection limit a new
//! connection is closed at once; past the body budget a request is answered 503. So a flood of idle connections
//! cannot take every file descriptor, and stalled half-sent bodies cannot take the memory:
//! `/healthz`, the database and outbound deliveries keep what they need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::routes::host::TrustedProxies;

/// The limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_buffered_body_bytes: usize,
    /// The part of `max_buffered_body_bytes` one client address may hold.
    pub max_buffered_body_bytes_per_client: usize,
    /// Exempt from the per-client limits (a reverse proxy carries every client).
    pub trusted_proxies: TrustedProxies,
}

/// Open connections, counted.
pub struct ConnectionSlots {
    limits: Limits,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    /// The second of the last log line about refused connections.
    logged_at: AtomicU64,
}

/// One admitted connection; its slot is given back when dropped.
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    client: Option<IpAddr>,
}

impl ConnectionSlots {
    pub fn new(limits: Limits) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots {
            limits,
            open: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `peer`, or `None` when it is over a limit.
    pub fn admit(self: &Arc<Self>, peer: std::net::SocketAddr) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refuse(peer, "max_connections");
            return None;
        }
        let client = (!self.limits.trusted_proxies.trusts(Some(peer))).then(|| peer.ip());
        if let Some(ip) = client {
            let mut by_client = self.by_client.lock().expect("connection slots lock");
            let held = by_client.entry(ip).or_default();
            if *held >= self.limits.max_connections_per_client {
                drop(by_client);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.refuse(peer, "max_connections_per_client");
                return None;
            }
            *held += 1;
        }
        Some(Slot {
            slots: self.clone(),
            client,
        })
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counted; logged at most once a second (outsiders choose how often this happens).
    fn refuse(&self, peer: std::net::SocketAddr, limit: &str) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.logged_at.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(
                client = %peer.ip(),
                limit,
                refused_so_far = total,
                "connection closed at once: over {limit}"
            );
        }
    }
}

impl Slot {
    /// The client address the per-client limits count against; None for a trusted proxy.
    pub fn client(&self) -> Option<IpAddr> {
        self.client
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.client {
            let mut by_client = self.slots.by_client.lock().expect("connection slots lock");
            if let Some(held) = by_client.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    by_client.remove(&ip);
                }
            }
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Request-body bytes being received, across every request, and per client address: one
/// address (a trusted proxy excepted) holds at most its share, so that a client stalling
/// bodies on all its connections leaves the rest of the budget to everyone else.
pub struct BodyBudget {
    limit: usize,
    per_client: usize,
    /// (bytes held in all, bytes held by each client address that holds any)
    used: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl BodyBudget {
    pub fn new(limit: usize, per_client: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit,
            per_client,
            used: Mutex::new((0, HashMap::new())),
        })
    }

    /// Take `n` bytes of the budget for `client`; false (nothing taken) when that would pass
    /// the total or the client's share.
    pub fn take(&self, client: Option<IpAddr>, n: usize) -> bool {
        let mut used = self.used.lock().expect("body budget lock");
        let (total, by_client) = &mut *used;
        if *total + n > self.limit {
            return false;
        }
        if let Some(ip) = client {
            let held = by_client.entry(ip).or_default();
            if *held + n > self.per_client {
                if *held == 0 {
                    by_client.remove(&ip);
                }
                return false;
            }
            *held += n;
        }
        *total += n;
        true
    }

    pub fn give_back(&self, client: Option<IpAddr>, n: usize) {
        if n == 0 {
            return;
        }
        let mut used = self.used.lock().expect("body budget lock");
        let (total, by_client) = &mut *used;
        *total -= n;
        if let Some(ip) = client {
            if let Some(held) = by_client.get_mut(&ip) {
                *held -= n;
                if *held == 0 {
                    by_client.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_client: per_client,
            max_buffered_body_bytes: 0,
            max_buffered_body_bytes_per_client: 0,
            trusted_proxies: TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]),
        }
    }

    #[test]
    fn connections_are_capped_per_client_and_in_total() {
        let slots = ConnectionSlots::new(limits(4, 2));
        let a: std::net::SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: std::net::SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let proxy: std::net::SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let a1 = slots.admit(a).unwrap();
        let _a2 = slots.admit(a).unwrap();
        assert!(slots.admit(a).is_none(), "a third from the same client");
        let _b1 = slots.admit(b).unwrap();
        // A trusted proxy is not held to the per-client limit, only to the total.
        let _p1 = slots.admit(proxy).unwrap();
        assert!(slots.admit(proxy).is_none(), "over the total");
        drop(a1);
        assert!(slots.admit(a).is_some());
        assert_eq!(slots.refused(), 2);
    }

    #[test]
    fn the_body_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(100, 100);
        assert!(budget.take(None, 60));
        assert!(!budget.take(None, 41));
        assert!(budget.take(None, 40));
        budget.give_back(None, 60);
        assert!(budget.take(None, 60));
    }

    #[test]
    fn one_client_holds_at_most_its_share() {
        let budget = BodyBudget::new(100, 30);
        let (a, b) = (
            Some("192.0.2.1".parse().unwrap()),
            Some("192.0.2.2".parse().unwrap()),
        );
        assert!(budget.take(a, 20));
        assert!(!budget.take(a, 11), "past a's share");
        assert!(budget.take(a, 10));
        assert!(budget.take(b, 30), "b has its own share");
        // A trusted proxy (no client) is held to the total only.
        assert!(budget.take(None, 40));
        assert!(!budget.take(None, 1), "past the total");
        budget.give_back(a, 30);
        assert!(budget.take(a, 30));
        assert_eq!(budget.used.lock().unwrap().1.len(), 2);
        budget.give_back(a, 30);
        budget.give_back(b, 30);
        assert!(
            budget.used.lock().unwrap().1.is_empty(),
            "nothing kept for idle clients"
        );
    }
}
