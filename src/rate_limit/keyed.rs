//! A rate limiter with one limit per key, a bounded number of keys and
//! per-key quotas (tiers).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::Counter;

use super::config::{Overflow, RateLimitConfig};
use super::error::RateLimited;
use super::layer::{KeyedRateLimitLayer, RateLimitBuilder};
use super::limiter::{gcra, try_gcra, Acquire, Gcra, Limiter, MeshClock};
use super::rate::Policy;
use crate::config::ConfigError;

/// The limits of a [`KeyedRateLimitLayer`]: one GCRA per key, at most
/// `max_keys` of them (least recently used keys are forgotten first, or new
/// keys share one overflow limit: [`Overflow`]), and a policy per key from a
/// tier table (default: the layer's rate and burst).
///
/// Metrics carry only the limiter's name, never the key, so their
/// cardinality does not grow with the keys. Keys evicted are counted in
/// `tower_mesh_rate_limit_evicted_keys_total`.
///
/// The keys live in one map behind one mutex, hashed with
/// [foldhash](https://docs.rs/foldhash) (seeded at random per map; the
/// bound on the keys also bounds what colliding keys could cost). A call
/// whose key is tracked holds the lock for one probe, a recency stamp and
/// governor's compare-and-swap, and allocates nothing: a configured
/// limiter ([`KeySpec`](super::KeySpec)) looks its key up borrowed from the
/// request, and only a new key is copied into the map. One map (not
/// shards) keeps the bound and the least-recently-used order exact.
pub struct KeyedLimiter<K, F> {
    name: Arc<str>,
    default: Policy,
    tiers: HashMap<K, Policy>,
    key_fn: F,
    max_keys: usize,
    overflow: Overflow,
    clock: MeshClock,
    keys: Mutex<Keys<K>>,
    /// Requests without a key, and new keys beyond the bound with
    /// [`Overflow::Shared`].
    anonymous: Gcra,
    evicted: Counter,
}

struct Keys<K> {
    map: HashMap<K, Entry, foldhash::fast::RandomState>,
    tick: u64,
}

struct Entry {
    gcra: Gcra,
    policy: Policy,
    used: u64,
}

/// A key looked up: tracked (the decision is made), or new (the lock is
/// still held for its insertion).
enum Lookup<'a, K> {
    Tracked(Result<(), RateLimited>),
    New(MutexGuard<'a, Keys<K>>, u64),
}

impl<K: Hash + Eq, F> KeyedLimiter<K, F> {
    /// How many keys are tracked now.
    pub fn keys(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether `key` is tracked now.
    pub fn contains(&self, key: &K) -> bool {
        self.lock().map.contains_key(key)
    }

    /// The policy that applies to `key`.
    pub fn policy(&self, key: &K) -> Policy {
        self.tiers.get(key).copied().unwrap_or(self.default)
    }

    fn lock(&self) -> MutexGuard<'_, Keys<K>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a permit of `key`'s limit.
    pub(crate) fn acquire_key(&self, key: Option<K>) -> Result<(), RateLimited> {
        let Some(key) = key else { return self.acquire_anonymous() };
        match self.find(&key) {
            Lookup::Tracked(result) => result,
            Lookup::New(keys, tick) => self.insert(keys, tick, || key),
        }
    }

    /// Take a permit of the limit of a borrowed key: no allocation when it
    /// is tracked, one copy (`to_owned`) when it is new.
    pub(crate) fn acquire_borrowed<Q>(&self, key: Option<&Q>) -> Result<(), RateLimited>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq + ToOwned<Owned = K>,
    {
        let Some(key) = key else { return self.acquire_anonymous() };
        match self.find(key) {
            Lookup::Tracked(result) => result,
            Lookup::New(keys, tick) => self.insert(keys, tick, || key.to_owned()),
        }
    }

    /// Decide for a tracked key, or hand back the lock for a new one.
    #[inline]
    fn find<Q>(&self, key: &Q) -> Lookup<'_, K>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        let mut keys = self.lock();
        keys.tick += 1;
        let tick = keys.tick;
        match keys.map.get_mut(key) {
            Some(entry) => {
                entry.used = tick;
                let policy = entry.policy;
                Lookup::Tracked(try_gcra(&entry.gcra).map_err(|wait| RateLimited::new(self.name.clone(), policy, wait)))
            }
            None => Lookup::New(keys, tick),
        }
    }

    /// Track a new key (made by `make` only if it is tracked), forgetting
    /// old ones at the bound, or decide in the overflow limit.
    fn insert(
        &self,
        mut keys: MutexGuard<'_, Keys<K>>,
        tick: u64,
        make: impl FnOnce() -> K,
    ) -> Result<(), RateLimited> {
        if keys.map.len() >= self.max_keys {
            match self.overflow {
                Overflow::Shared => {
                    drop(keys);
                    return self.acquire_anonymous();
                }
                Overflow::EvictLeastRecent => self.evict(&mut keys),
            }
        }
        let key = make();
        let policy = self.policy(&key);
        let entry = Entry { gcra: gcra(policy, self.clock.clone()), policy, used: tick };
        let result = try_gcra(&entry.gcra).map_err(|wait| RateLimited::new(self.name.clone(), policy, wait));
        keys.map.insert(key, entry);
        result
    }

    fn acquire_anonymous(&self) -> Result<(), RateLimited> {
        try_gcra(&self.anonymous).map_err(|wait| RateLimited::new(self.name.clone(), self.default, wait))
    }

    /// Forget the least recently used eighth of the keys (at least one):
    /// one O(n) pass per n/8 new keys.
    #[cold]
    fn evict(&self, keys: &mut Keys<K>) {
        let n = keys.map.len();
        let drop_n = (n / 8).max(1);
        let mut stamps: Vec<u64> = keys.map.values().map(|e| e.used).collect();
        let (_, cutoff, _) = stamps.select_nth_unstable(drop_n - 1);
        let cutoff = *cutoff;
        let mut left = drop_n;
        keys.map.retain(|_, e| {
            if left > 0 && e.used <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
        self.evicted.increment((n - keys.map.len()) as u64);
        tracing::debug!(service = %self.name, evicted = n - keys.map.len(), "rate limiter forgot least recently used keys");
    }
}

impl<K, F> fmt::Debug for KeyedLimiter<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("name", &self.name)
            .field("default", &self.default)
            .field("tiers", &self.tiers.len())
            .field("max_keys", &self.max_keys)
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

impl<K, F, Req> Limiter<Req> for KeyedLimiter<K, F>
where
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq,
{
    type Pending = std::future::Ready<Result<(), RateLimited>>;

    #[inline]
    fn acquire(&self, req: &Req) -> Acquire<Self::Pending> {
        match self.acquire_key((self.key_fn)(req)) {
            Ok(()) => Acquire::Admitted,
            Err(e) => Acquire::Denied(e),
        }
    }
}

/// Builder of a [`KeyedRateLimitLayer`], from [`RateLimitBuilder::key`].
pub struct KeyedRateLimitBuilder<K, F> {
    base: RateLimitBuilder,
    key_fn: F,
    tiers: HashMap<K, Policy>,
    _key: PhantomData<fn() -> K>,
}

impl<K: Hash + Eq, F> KeyedRateLimitBuilder<K, F> {
    pub(crate) fn new(base: RateLimitBuilder, key_fn: F) -> Self {
        KeyedRateLimitBuilder { base, key_fn, tiers: HashMap::new(), _key: PhantomData }
    }

    /// Give `key` its own policy (a tier: a paying customer's higher quota).
    pub fn tier(mut self, key: K, policy: Policy) -> Self {
        self.tiers.insert(key, policy);
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<KeyedRateLimitLayer<K, F>, ConfigError> {
        let (name, config): (Arc<str>, RateLimitConfig) = self.base.validated()?;
        let clock = MeshClock::new();
        let default = config.policy();
        let limiter = KeyedLimiter {
            evicted: metrics::counter!("tower_mesh_rate_limit_evicted_keys_total", "service" => name.to_string()),
            name: name.clone(),
            default,
            tiers: self.tiers,
            key_fn: self.key_fn,
            max_keys: config.max_keys,
            overflow: config.overflow,
            anonymous: gcra(default, clock.clone()),
            clock,
            keys: Mutex::new(Keys { map: HashMap::default(), tick: 0 }),
        };
        Ok(KeyedRateLimitLayer::with_limiter(limiter, name, config.max_wait))
    }
}

impl<K, F> fmt::Debug for KeyedRateLimitBuilder<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitBuilder").field("base", &self.base).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::rate_limit::key::tests::api_key;
    use crate::rate_limit::{Acquire, Limiter, RateLimitLayer};

    type ByString = fn(&()) -> Option<String>;

    /// A limiter of `String` keys: 1/min with a burst of 2, tier `gold` 5.
    fn string_keyed(max_keys: usize, overflow: Overflow) -> KeyedRateLimitLayer<String, ByString> {
        let config = RateLimitConfig {
            rate: "1/min".parse().unwrap(),
            burst: Some(2),
            max_keys,
            overflow,
            ..Default::default()
        };
        RateLimitLayer::builder()
            .config(&config)
            .key((|_: &()| None) as ByString)
            .tier("gold".to_owned(), Policy::new("1/min".parse().unwrap(), 5))
            .build()
            .unwrap()
    }

    fn admitted_borrowed(l: &KeyedLimiter<String, ByString>, key: Option<&str>, n: usize) -> usize {
        (0..n).filter(|_| l.acquire_borrowed(key).is_ok()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn borrowed_keys_have_their_own_limits_and_tiers() {
        let layer = string_keyed(100, Overflow::EvictLeastRecent);
        let l = layer.limiter();
        assert_eq!(admitted_borrowed(l, Some("a"), 5), 2);
        assert_eq!(admitted_borrowed(l, Some("b"), 5), 2, "another key is not affected");
        assert_eq!(admitted_borrowed(l, Some("gold"), 9), 5, "the tier table applies to borrowed keys");
        assert_eq!(admitted_borrowed(l, None, 5), 2, "no key: the anonymous limit");
        assert_eq!(l.keys(), 3);
        assert!(l.contains(&"a".to_owned()));
        assert!(l.acquire_key(Some("a".to_owned())).is_err(), "owned and borrowed lookups find the same key");
    }

    #[tokio::test(start_paused = true)]
    async fn borrowed_keys_are_evicted_least_recent_first() {
        let layer = string_keyed(4, Overflow::EvictLeastRecent);
        let l = layer.limiter();
        for k in ["a", "b", "c", "d", "a", "e"] {
            l.acquire_borrowed(Some(k)).ok();
        }
        assert_eq!(l.keys(), 4);
        assert!(!l.contains(&"b".to_owned()), "b was the least recently used");
        assert_eq!(admitted_borrowed(l, Some("b"), 5), 2, "a forgotten key starts with a full burst");
    }

    #[tokio::test(start_paused = true)]
    async fn borrowed_keys_beyond_the_bound_share_the_overflow_limit() {
        let layer = string_keyed(1, Overflow::Shared);
        let l = layer.limiter();
        assert_eq!(admitted_borrowed(l, Some("a"), 5), 2);
        assert_eq!(admitted_borrowed(l, Some("b"), 1), 1, "b goes to the shared limit");
        assert_eq!(admitted_borrowed(l, Some("gold"), 5), 1, "overflow keys get the default policy, shared");
        assert_eq!(l.keys(), 1);
        assert!(!l.contains(&"gold".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn configured_header_keys_have_their_own_limits() {
        let cfg = RateLimitConfig {
            rate: "1/min".parse().unwrap(),
            burst: Some(1),
            max_keys: 2,
            key: Some("header:x-api-key".parse().unwrap()),
            ..Default::default()
        };
        let layer = cfg.layer("keys").unwrap();
        let l = layer.limiter();
        let admit = |req: &http::Request<()>| matches!(l.acquire(req), Acquire::Admitted);
        assert!(admit(&api_key(b"k1")));
        assert!(!admit(&api_key(b"k1")), "k1 spent its limit");
        assert!(admit(&api_key(b"k2")), "k2 has its own");
        assert!(admit(&http::Request::new(())), "no key: the anonymous limit");
        assert!(!admit(&http::Request::new(())));
        assert!(admit(&api_key(b"k3")), "k1, the least recent, is forgotten");
        assert!(admit(&api_key(b"k1")), "and starts again with a full burst");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// For any sequence of keys, the live keys never exceed `max_keys`;
        /// evicting keeps the key just used, sharing never forgets a key
        /// and tracks exactly the first `max_keys` distinct ones.
        #[test]
        fn live_keys_never_exceed_the_bound(
            max_keys in 1usize..12,
            evict in any::<bool>(),
            calls in proptest::collection::vec((0u8..40, any::<bool>()), 1..300),
        ) {
            let overflow = if evict { Overflow::EvictLeastRecent } else { Overflow::Shared };
            let layer = string_keyed(max_keys, overflow);
            let l = layer.limiter();
            let mut first = Vec::new();
            for (k, borrowed) in calls {
                let key = format!("k{k}");
                let _ = if borrowed { l.acquire_borrowed(Some(key.as_str())) } else { l.acquire_key(Some(key.clone())) };
                prop_assert!(l.keys() <= max_keys, "{} keys, bound {max_keys}", l.keys());
                if !first.contains(&key) && first.len() < max_keys {
                    first.push(key.clone());
                }
                if evict {
                    prop_assert!(l.contains(&key), "the key just used is tracked");
                } else {
                    let tracked: HashSet<&String> = first.iter().filter(|k| l.contains(k)).collect();
                    prop_assert_eq!(tracked.len(), first.len(), "the first keys stay");
                    prop_assert_eq!(l.keys(), first.len(), "and no other");
                }
            }
        }
    }
}
