//! Per-key breakers: one breaker state per key of the request (e.g. the URI
//! authority), in a registry that evicts idle keys.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::future::{KeyedRef, ResponseFuture};
use super::state::{metric_labels, CircuitMetrics, CircuitState, Listener, Settings, Shared};
use super::{CircuitBreakerConfig, CircuitBreakerHandle};
use crate::classify::Classify;
use crate::config::{check_nonzero, ConfigError};
use crate::BoxError;

struct Entry {
    shared: Arc<Shared>,
    last_used: Instant,
}

struct Map<K> {
    entries: HashMap<K, Entry>,
    last_sweep: Instant,
}

/// The per-key breakers of a [`KeyedCircuitBreakerLayer`].
pub struct CircuitBreakerRegistry<K> {
    name: String,
    settings: Settings,
    listeners: Vec<Listener>,
    idle_ttl: Duration,
    map: Mutex<Map<K>>,
}

impl<K: fmt::Debug> fmt::Debug for CircuitBreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("CircuitBreakerRegistry")
            .field("name", &self.name)
            .field("idle_ttl", &self.idle_ttl)
            .field("keys", &map.entries.keys().collect::<Vec<_>>())
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
            Self::sweep(&mut map, now, self.idle_ttl);
        }
        if let Some(e) = map.entries.get_mut(&key) {
            e.last_used = now;
            return e.shared.clone();
        }
        let name = format!("{}[{:?}]", self.name, key);
        let labels = metric_labels(&self.name, Some(format!("{key:?}")));
        let shared = Arc::new(Shared::new(name.into(), labels, self.settings.clone(), self.listeners.clone()));
        map.entries.insert(key, Entry { shared: shared.clone(), last_used: now });
        shared
    }

    fn sweep(map: &mut Map<K>, now: Instant, ttl: Duration) {
        map.entries.retain(|_, e| now.saturating_duration_since(e.last_used) < ttl);
        map.last_sweep = now;
    }

    /// Remove the keys not used for the idle TTL (this also happens by itself,
    /// at most once per TTL, on calls).
    pub fn evict_idle(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Self::sweep(&mut map, Instant::now(), self.idle_ttl);
    }

    /// The keys with their state and counters.
    pub fn keys(&self) -> Vec<(K, CircuitMetrics)> {
        let handles: Vec<_> = {
            let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entries.iter().map(|(k, e)| (k.clone(), e.shared.clone())).collect()
        };
        handles.into_iter().map(|(k, s)| (k, s.snapshot())).collect()
    }

    /// The handle of `key`'s breaker, if it exists.
    pub fn get(&self, key: &K) -> Option<CircuitBreakerHandle> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entries.get(key).map(|e| CircuitBreakerHandle { shared: e.shared.clone() })
    }

    /// The state of `key`'s breaker (`None`: unknown or evicted key).
    pub fn state(&self, key: &K) -> Option<CircuitState> {
        self.get(key).map(|h| h.state())
    }

    /// Number of keys.
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
pub struct KeyedCircuitBreakerBuilder<C, F> {
    pub(crate) config: CircuitBreakerConfig,
    pub(crate) classifier: C,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) key_fn: F,
    pub(crate) idle_ttl: Duration,
}

impl<C: fmt::Debug, F> fmt::Debug for KeyedCircuitBreakerBuilder<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerBuilder")
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("idle_ttl", &self.idle_ttl)
            .finish_non_exhaustive()
    }
}

impl<C, F> KeyedCircuitBreakerBuilder<C, F> {
    /// Keys unused for this long are evicted (default 10 minutes).
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Validate and build.
    pub fn build<K>(self) -> Result<KeyedCircuitBreakerLayer<K, F, C>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    {
        self.config.validate()?;
        check_nonzero("circuit_breaker.idle_ttl", self.idle_ttl.is_zero())?;
        let registry = CircuitBreakerRegistry {
            name: self.config.name.clone(),
            settings: Settings::from_config(&self.config),
            listeners: self.listeners,
            idle_ttl: self.idle_ttl,
            map: Mutex::new(Map { entries: HashMap::new(), last_sweep: Instant::now() }),
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

impl<K: fmt::Debug, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
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

impl<S: fmt::Debug, K: fmt::Debug, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
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
