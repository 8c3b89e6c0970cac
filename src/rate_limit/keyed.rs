//! A rate limiter with one limit per key, a bounded number of keys and
//! per-key quotas (tiers).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

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
    map: HashMap<K, Entry>,
    tick: u64,
}

struct Entry {
    gcra: Gcra,
    policy: Policy,
    used: u64,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys<K>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a permit of `key`'s limit.
    pub(crate) fn acquire_key(&self, key: Option<K>) -> Result<(), RateLimited> {
        let Some(key) = key else { return self.acquire_anonymous() };
        let mut keys = self.lock();
        keys.tick += 1;
        let tick = keys.tick;
        if let Some(entry) = keys.map.get_mut(&key) {
            entry.used = tick;
            let policy = entry.policy;
            return try_gcra(&entry.gcra).map_err(|wait| RateLimited::new(self.name.clone(), policy, wait));
        }
        if keys.map.len() >= self.max_keys {
            match self.overflow {
                Overflow::Shared => {
                    drop(keys);
                    return self.acquire_anonymous();
                }
                Overflow::EvictLeastRecent => self.evict(&mut keys),
            }
        }
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
            keys: Mutex::new(Keys { map: HashMap::new(), tick: 0 }),
        };
        Ok(KeyedRateLimitLayer::with_limiter(limiter, name, config.max_wait))
    }
}

impl<K, F> fmt::Debug for KeyedRateLimitBuilder<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitBuilder").field("base", &self.base).finish_non_exhaustive()
    }
}
