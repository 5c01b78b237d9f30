//! The embedded store's cache of channel accounts by the number called.

use crate::channels::{ChannelAccount, RouteKey};

/// Channel accounts by the number called, for a store only this process writes (SQLite): every
/// change goes through `put_channel_account`, which empties it. Only numbers that are connected
/// are kept (a route by account or by call is looked up each time, and so is a miss), so
/// what a caller sends cannot grow it: a request's other fields play no part in its key.
#[derive(Default)]
pub struct AccountCache {
    inner: std::sync::RwLock<AccountCacheInner>,
}

#[derive(Default)]
struct AccountCacheInner {
    /// Bumped by every change: a lookup that started before one does not fill the cache.
    generation: u64,
    /// (provider, number called) → account.
    accounts: std::collections::HashMap<(String, String), ChannelAccount>,
}

impl AccountCache {
    /// The cached account for the number `key` calls, and the generation to fill the cache
    /// with on a miss. Never a hit for a request of a call: it goes to the call's location
    /// first, which the cache does not know.
    pub fn get(&self, provider: &str, key: &RouteKey) -> (Option<ChannelAccount>, u64) {
        let inner = self.inner.read().expect("account cache lock");
        let address = key
            .address
            .as_ref()
            .filter(|_| key.correlation_id.is_none());
        let hit = address.and_then(|address| {
            inner
                .accounts
                .get(&(provider.to_owned(), address.clone()))
                .cloned()
        });
        (hit, inner.generation)
    }

    /// Keep the account a lookup found by the number called, unless the accounts changed
    /// since it started.
    pub fn put(&self, provider: &str, address: &str, generation: u64, account: &ChannelAccount) {
        let mut inner = self.inner.write().expect("account cache lock");
        if inner.generation != generation {
            return;
        }
        inner
            .accounts
            .insert((provider.to_owned(), address.to_owned()), account.clone());
    }

    pub fn clear(&self) {
        let mut inner = self.inner.write().expect("account cache lock");
        inner.generation += 1;
        inner.accounts.clear();
    }

    /// Accounts kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .read()
            .expect("account cache lock")
            .accounts
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_cache_answers_by_number_and_never_for_a_call() {
        let cache = AccountCache::default();
        let account = ChannelAccount {
            location_id: "L".into(),
            account_id: "AC1".into(),
            secret: "token".into(),
            settings: serde_json::json!({}),
        };
        let key = |correlation_id: Option<&str>, account_id: &str| RouteKey {
            address: Some("+14155550100".into()),
            also: Vec::new(),
            correlation_id: correlation_id.map(str::to_owned),
            account_id: Some(account_id.into()),
        };
        let (_, generation) = cache.get("acme", &key(None, "AC1"));
        cache.put("acme", "+14155550100", generation, &account);
        // Whatever account id the request carries, the number finds the account...
        let (hit, _) = cache.get("acme", &key(None, "ACother"));
        assert_eq!(hit.unwrap().location_id, "L");
        // ...but a request of a call is looked up by its call first, never from here.
        assert!(cache.get("acme", &key(Some("CA1"), "AC1")).0.is_none());
        // A change of the accounts empties it, and a lookup begun before cannot refill it.
        cache.clear();
        cache.put("acme", "+14155550100", generation, &account);
        assert!(cache.get("acme", &key(None, "AC1")).0.is_none());
    }
}
