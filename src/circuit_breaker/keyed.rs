//! Per-key breakers: one breaker state per key of the request (e.g. the URI
//! authority), in a registry bounded in keys and in metric series.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lru::LruCache;
use metrics::{Counter, Gauge};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::future::{KeyedRef, ResponseFuture};
use super::state::{metric_labels, CircuitMetrics, CircuitState, Listener, Settings, Shared};
use super::{CircuitBreakerConfig, CircuitBreakerHandle};
use crate::classify::Classify;
use crate::config::{check_nonzero, ConfigError};
use crate::BoxError;

/// Default [`KeyedCircuitBreakerBuilder::max_keys`].
pub(crate) const DEFAULT_MAX_KEYS: usize = 1024;
/// Default [`KeyedCircuitBreakerBuilder::metric_key_buckets`].
const DEFAULT_METRIC_BUCKETS: usize = 16;
/// The `key` label (and name suffix) of the breaker shared by the keys past
/// `max_keys`.
const OVERFLOW: &str = "overflow";

struct Entry {
    shared: Arc<Shared>,
    last_used: Instant,
}

struct Map<K> {
    /// Least recently used last (every use promotes a key), so the idle keys
    /// are a tail of the order.
    entries: LruCache<K, Entry>,
    /// The breaker of the keys that found the registry full of keys it may
    /// not evict; made on first need.
    overflow: Option<Arc<Shared>>,
    last_sweep: Instant,
}

/// How a key's breaker is labelled in metrics: its own `key` label for the
/// listed keys, else one of `buckets` hashed labels (`"other"` when zero).
/// Either way the number of label values is bounded.
#[derive(Clone, Debug, Default)]
struct KeyLabels {
    listed: HashSet<String>,
    buckets: usize,
}

impl KeyLabels {
    fn label(&self, key: String) -> String {
        if self.listed.contains(&key) {
            return key;
        }
        if self.buckets == 0 {
            return "other".to_owned();
        }
        // Fixed keys (not a per-process random state): a key lands in the
        // same bucket in every run of the same build.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        format!("bucket-{}", h.finish() % self.buckets as u64)
    }
}

/// Metric handles of the registry itself, labelled `service` only.
struct RegistryMetrics {
    keys: Gauge,
    idle_evictions: Counter,
    capacity_evictions: Counter,
    overflow_calls: Counter,
}

impl RegistryMetrics {
    fn new(name: &str) -> Self {
        let evictions = |reason: &'static str| metrics::counter!("tower_mesh_circuit_breaker_key_evictions_total", "service" => name.to_owned(), "reason" => reason);
        RegistryMetrics {
            keys: metrics::gauge!("tower_mesh_circuit_breaker_keys", "service" => name.to_owned()),
            idle_evictions: evictions("idle"),
            capacity_evictions: evictions("capacity"),
            overflow_calls: metrics::counter!("tower_mesh_circuit_breaker_key_overflow_total", "service" => name.to_owned()),
        }
    }
}

/// The per-key breakers of a [`KeyedCircuitBreakerLayer`].
///
/// Bounded: at most [`max_keys`](KeyedCircuitBreakerBuilder::max_keys) keys
/// live at once. Keys unused for the idle TTL are evicted. A new key that
/// finds the registry full evicts the least recently used key whose breaker
/// is closed (an open, half-open or forced breaker is kept: flooding the
/// registry with new keys must not close it); if there is none, the new key
/// uses the one **overflow** breaker (named `name[overflow]`, labelled
/// `key="overflow"`), shared by every key in that situation until room is
/// made.
pub struct CircuitBreakerRegistry<K> {
    name: String,
    settings: Settings,
    listeners: Vec<Listener>,
    idle_ttl: Duration,
    max_keys: usize,
    labels: KeyLabels,
    metrics: RegistryMetrics,
    map: Mutex<Map<K>>,
}

impl<K: fmt::Debug + Hash + Eq> fmt::Debug for CircuitBreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("CircuitBreakerRegistry")
            .field("name", &self.name)
            .field("idle_ttl", &self.idle_ttl)
            .field("max_keys", &self.max_keys)
            .field("keys", &map.entries.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("overflow", &map.overflow.as_ref().map(|s| s.state()))
            .finish()
    }
}

impl<K> CircuitBreakerRegistry<K>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    /// The breaker for `key`, created (closed) on first use; marks it used.
    fn get_or_create(&self, key: K) -> Arc<Shared> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(map.last_sweep) >= self.idle_ttl {
            self.sweep(&mut map, now);
        }
        if let Some(e) = map.entries.get_mut(&key) {
            e.last_used = now;
            return e.shared.clone();
        }
        if map.entries.len() >= self.max_keys && !self.evict_one(&mut map, &key) {
            self.metrics.overflow_calls.increment(1);
            return self.overflow(&mut map).clone();
        }
        let key_str = format!("{key:?}");
        let name = format!("{}[{key_str}]", self.name);
        let labels = metric_labels(&self.name, Some(self.labels.label(key_str)));
        let shared = Arc::new(Shared::new(name.into(), labels, self.settings.clone(), self.listeners.clone()));
        map.entries.put(key, Entry { shared: shared.clone(), last_used: now });
        self.metrics.keys.set(map.entries.len() as f64);
        shared
    }

    /// Make room for `key`: evict the least recently used key whose breaker
    /// is closed. `false`: every breaker is open, half-open or forced.
    fn evict_one(&self, map: &mut Map<K>, key: &K) -> bool {
        let victim =
            map.entries.iter().rev().find(|(_, e)| e.shared.state() == CircuitState::Closed).map(|(k, _)| k.clone());
        match victim {
            Some(victim) => {
                map.entries.pop(&victim);
                self.metrics.capacity_evictions.increment(1);
                tracing::debug!(service = %self.name, evicted = ?victim, new = ?key, max_keys = self.max_keys, "circuit breaker registry full: least recently used closed key evicted");
                true
            }
            None => false,
        }
    }

    /// The breaker shared by the keys past `max_keys`.
    fn overflow<'m>(&self, map: &'m mut Map<K>) -> &'m Arc<Shared> {
        map.overflow.get_or_insert_with(|| {
            tracing::warn!(
                service = %self.name,
                max_keys = self.max_keys,
                "circuit breaker registry full of keys that are not closed: new keys share the overflow breaker"
            );
            let name = format!("{}[{OVERFLOW}]", self.name);
            let labels = metric_labels(&self.name, Some(OVERFLOW.to_owned()));
            Arc::new(Shared::new(name.into(), labels, self.settings.clone(), self.listeners.clone()))
        })
    }

    fn sweep(&self, map: &mut Map<K>, now: Instant) {
        // The idle keys are the least recently used ones.
        let mut evicted = 0u64;
        while map.entries.peek_lru().is_some_and(|(_, e)| now.saturating_duration_since(e.last_used) >= self.idle_ttl) {
            map.entries.pop_lru();
            evicted += 1;
        }
        map.last_sweep = now;
        if evicted > 0 {
            self.metrics.idle_evictions.increment(evicted);
            self.metrics.keys.set(map.entries.len() as f64);
            tracing::debug!(service = %self.name, evicted, keys = map.entries.len(), "idle circuit breaker keys evicted");
        }
    }

    /// Remove the keys not used for the idle TTL (this also happens by itself,
    /// at most once per TTL, on calls).
    pub fn evict_idle(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut map, Instant::now());
    }

    /// The keys with their state and counters (not the overflow breaker's).
    pub fn keys(&self) -> Vec<(K, CircuitMetrics)> {
        let handles: Vec<_> = {
            let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entries.iter().map(|(k, e)| (k.clone(), e.shared.clone())).collect()
        };
        handles.into_iter().map(|(k, s)| (k, s.snapshot())).collect()
    }

    /// The handle of `key`'s breaker, if it exists. Does not count as a use.
    pub fn get(&self, key: &K) -> Option<CircuitBreakerHandle> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entries.peek(key).map(|e| CircuitBreakerHandle { shared: e.shared.clone() })
    }

    /// The state of `key`'s breaker (`None`: unknown or evicted key, or a
    /// key that uses the overflow breaker).
    pub fn state(&self, key: &K) -> Option<CircuitState> {
        self.get(key).map(|h| h.state())
    }

    /// The handle of the overflow breaker, once a key has needed it.
    pub fn overflow_breaker(&self) -> Option<CircuitBreakerHandle> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.overflow.as_ref().map(|s| CircuitBreakerHandle { shared: s.clone() })
    }

    /// The most keys kept at once.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Number of keys (the overflow breaker not counted).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builder of a [`KeyedCircuitBreakerLayer`], from
/// [`CircuitBreakerBuilder::key`](super::CircuitBreakerBuilder::key).
pub struct KeyedCircuitBreakerBuilder<F, C> {
    pub(crate) config: CircuitBreakerConfig,
    pub(crate) classifier: C,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) key_fn: F,
    pub(crate) idle_ttl: Duration,
    pub(crate) max_keys: usize,
    pub(crate) labels: KeyLabelsConfig,
}

/// The metric labelling of a keyed builder (see
/// [`KeyedCircuitBreakerBuilder::metric_keys`]).
#[derive(Clone, Debug)]
pub(crate) struct KeyLabelsConfig(KeyLabels);

impl Default for KeyLabelsConfig {
    fn default() -> Self {
        KeyLabelsConfig(KeyLabels { listed: HashSet::new(), buckets: DEFAULT_METRIC_BUCKETS })
    }
}

impl<F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerBuilder<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerBuilder")
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("idle_ttl", &self.idle_ttl)
            .field("max_keys", &self.max_keys)
            .field("metric_keys", &self.labels.0.listed)
            .field("metric_key_buckets", &self.labels.0.buckets)
            .finish_non_exhaustive()
    }
}

impl<F, C> KeyedCircuitBreakerBuilder<F, C> {
    /// Keys unused for this long are evicted (default 10 minutes).
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// The most keys kept at once (default 1024; at least 1). A new key past
    /// it evicts the least recently used key whose breaker is closed, or, if
    /// none is, uses the one overflow breaker shared by such keys (see
    /// [`CircuitBreakerRegistry`]). Keys may come from what a client sends
    /// (a header, a host name): this bounds the memory they take.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Keys whose breakers carry their own `key` metric label (the key's
    /// `Debug` form, as in the breaker's name). The metrics of the other keys
    /// are labelled by [bucket](Self::metric_key_buckets), so the number of
    /// series stays bounded whatever keys come in.
    pub fn metric_keys<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: fmt::Debug,
    {
        self.labels.0.listed = keys.into_iter().map(|k| format!("{k:?}")).collect();
        self
    }

    /// The metrics of the keys not listed in
    /// [`metric_keys`](Self::metric_keys) are labelled `key="bucket-N"`,
    /// `N` a hash of the key modulo `buckets` (default 16); with `0`, all of
    /// them `key="other"`. Keys sharing a label add up in its counters and
    /// histogram; its state gauge shows the last transition of any of them
    /// (the [registry](CircuitBreakerRegistry::keys) has each key's state).
    pub fn metric_key_buckets(mut self, buckets: usize) -> Self {
        self.labels.0.buckets = buckets;
        self
    }

    /// Validate and build.
    pub fn build<K>(self) -> Result<KeyedCircuitBreakerLayer<K, F, C>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    {
        self.config.validate()?;
        check_nonzero("circuit_breaker.idle_ttl", self.idle_ttl.is_zero())?;
        check_nonzero("circuit_breaker.max_keys", self.max_keys == 0)?;
        let registry = CircuitBreakerRegistry {
            name: self.config.name.clone(),
            settings: Settings::from_config(&self.config),
            listeners: self.listeners,
            idle_ttl: self.idle_ttl,
            max_keys: self.max_keys,
            labels: self.labels.0,
            metrics: RegistryMetrics::new(&self.config.name),
            map: Mutex::new(Map { entries: LruCache::unbounded(), overflow: None, last_sweep: Instant::now() }),
        };
        Ok(KeyedCircuitBreakerLayer { registry: Arc::new(registry), key_fn: self.key_fn, classifier: self.classifier })
    }
}

/// Layer with one breaker per key of the request (`key_fn(&req)`), e.g. per
/// upstream authority. Clones share the registry.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder()
///     .count_window(2)
///     .minimum_calls(2)
///     .key(|req: &(&'static str, bool)| req.0)
///     .build()
///     .unwrap();
/// let registry = layer.registry();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|(_, fail): (&str, bool)| async move {
///     if fail { Err("boom") } else { Ok(()) }
/// });
/// for _ in 0..2 {
///     let _ = svc.clone().oneshot(("a", true)).await;
///     let _ = svc.clone().oneshot(("b", false)).await;
/// }
/// assert_eq!(registry.state(&"a"), Some(CircuitState::Open));
/// assert_eq!(registry.state(&"b"), Some(CircuitState::Closed));
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<K, F, C> {
    registry: Arc<CircuitBreakerRegistry<K>>,
    key_fn: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K: fmt::Debug + Hash + Eq, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// The registry of per-key breakers.
    pub fn registry(&self) -> Arc<CircuitBreakerRegistry<K>> {
        self.registry.clone()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A per-key circuit breaker around `S` (see [`KeyedCircuitBreakerLayer`]).
pub struct KeyedCircuitBreaker<S, K, F, C> {
    inner: S,
    registry: Arc<CircuitBreakerRegistry<K>>,
    key_fn: F,
    classifier: C,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug + Hash + Eq, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C: Clone> KeyedCircuitBreaker<S, K, F, C> {
    /// The registry of per-key breakers.
    pub fn registry(&self) -> Arc<CircuitBreakerRegistry<K>> {
        self.registry.clone()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, KeyedRef<C>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.registry.get_or_create((self.key_fn)(&req));
        let inner = &mut self.inner;
        ResponseFuture::admit(KeyedRef { shared, classifier: self.classifier.clone() }, || inner.call(req))
    }
}

#[cfg(test)]
mod tests;
