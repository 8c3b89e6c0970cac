//! A bulkhead partitioned by a key computed from each request.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use metrics::{Counter, Gauge};
use tower_layer::Layer;
use tower_service::Service;

use super::future::{KeyedResponseFuture, ResponseFuture};
use super::layer::BulkheadBuilder;
use super::pool::{BulkheadPermit, Pool};
use super::shared::Shared;
use crate::config::{check_nonzero, ConfigError};
use crate::error::BoxError;

/// Sweep idle partitions once the map has grown to this many entries (and
/// then whenever it doubles).
const MIN_SWEEP: usize = 64;

/// Default [`KeyedBulkheadBuilder::max_keys`].
const DEFAULT_MAX_KEYS: usize = 1024;

/// One pool of permits per key, at most `max_keys` of them. A partition nobody
/// holds a permit of (or waits on) is idle; idle partitions are dropped when
/// the map grows or is full, so keys with a high cardinality do not leak. A
/// new key that finds `max_keys` busy partitions uses the one overflow pool.
pub(crate) struct Registry<K> {
    pools: Mutex<Pools<K>>,
    max_keys: usize,
    name: Arc<str>,
    partitions: Gauge,
    overflow_calls: Counter,
}

struct Pools<K> {
    map: HashMap<K, Arc<Pool>>,
    sweep_at: usize,
    /// The pool shared by the keys past `max_keys`; made on first need.
    overflow: Option<Arc<Pool>>,
}

impl<K: Hash + Eq> Registry<K> {
    fn new(name: Arc<str>, max_keys: usize) -> Self {
        let label = name.to_string();
        Registry {
            pools: Mutex::new(Pools { map: HashMap::new(), sweep_at: MIN_SWEEP.min(max_keys), overflow: None }),
            max_keys,
            partitions: metrics::gauge!("tower_mesh_bulkhead_partitions", "service" => label.clone()),
            overflow_calls: metrics::counter!("tower_mesh_bulkhead_key_overflow_total", "service" => label),
            name,
        }
    }

    /// A permit of `key`'s partition, or (when none is free) its pool to
    /// wait on.
    fn try_acquire(&self, key: K, max: usize) -> Result<BulkheadPermit, Arc<Pool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.map.get(&key) {
            return pool.try_acquire().ok_or_else(|| pool.clone());
        }
        if pools.map.len() >= pools.sweep_at {
            // An idle partition: no permit taken, and only the map holds its
            // pool (every waiter holds a clone). Dropping one loses nothing:
            // it is the same as a new one.
            pools.map.retain(|_, pool| Arc::strong_count(pool) > 1 || pool.in_use());
            pools.sweep_at = (pools.map.len() * 2).clamp(MIN_SWEEP.min(self.max_keys), self.max_keys);
        }
        let pool = if pools.map.len() >= self.max_keys {
            self.overflow_calls.increment(1);
            let name = &self.name;
            let max_keys = self.max_keys;
            pools.overflow.get_or_insert_with(|| {
                tracing::warn!(
                    service = %name,
                    max_keys,
                    "bulkhead partitions full of calls in flight: new keys share the overflow partition"
                );
                Arc::new(Pool::new(max))
            })
        } else {
            let pool = pools.map.entry(key).or_insert_with(|| Arc::new(Pool::new(max))).clone();
            self.partitions.set(pools.map.len() as f64);
            return pool.try_acquire().ok_or(pool);
        };
        pool.try_acquire().ok_or_else(|| pool.clone())
    }

    fn available_permits(&self, key: &K, max: usize) -> usize {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.map.get(key).map_or(max, |pool| pool.available_permits())
    }

    fn partitions(&self) -> usize {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).map.len()
    }

    fn overflow_available_permits(&self) -> Option<usize> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.overflow.as_ref().map(|pool| pool.available_permits())
    }
}

/// Layer of a bulkhead with one pool of `max_concurrent_calls` permits per
/// key (per downstream dependency, tenant, ...), so one slow partition cannot
/// take every permit. Made by [`BulkheadLayer::keyed`](super::BulkheadLayer::keyed)
/// or [`BulkheadBuilder::key`].
///
/// At most [`max_keys`](KeyedBulkheadBuilder::max_keys) partitions exist at
/// once (default 1024; keys may come from what clients send). Past it, idle
/// partitions are dropped to make room, and when every partition has calls
/// in flight a new key shares the one **overflow** partition (also
/// `max_concurrent_calls` permits) with the other keys in that situation.
///
/// The key is only known in `call`, so unlike [`Bulkhead`](super::Bulkhead)
/// the permit is taken there: immediately when the partition has one free
/// (no allocation), otherwise the response future waits up to `max_wait` for
/// one before it calls the inner service (that needs `S: Clone`: the ready
/// service moves into the future and a clone takes its place, as tower's
/// `Buffer` worker does).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::bulkhead::{BulkheadFull, BulkheadLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // At most 10 calls at once to each host.
/// let bulkhead = BulkheadLayer::builder()
///     .name("upstreams")
///     .max_concurrent_calls(10)
///     .key(|req: &http::Request<()>| req.uri().host().map(str::to_owned))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(bulkhead.clone())
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>("ok") });
///
/// let req = http::Request::get("http://a.example/").body(()).unwrap();
/// assert_eq!(svc.oneshot(req).await.unwrap(), "ok");
/// assert_eq!(bulkhead.available_permits(&Some("a.example".to_owned())), 10);
/// # }
/// ```
pub struct KeyedBulkheadLayer<K, F> {
    shared: Arc<Shared>,
    registry: Arc<Registry<K>>,
    key_fn: F,
}

impl<K: Hash + Eq, F> KeyedBulkheadLayer<K, F> {
    pub(crate) fn new(shared: Arc<Shared>, key_fn: F) -> Self {
        Self::with_max_keys(shared, key_fn, DEFAULT_MAX_KEYS)
    }

    fn with_max_keys(shared: Arc<Shared>, key_fn: F, max_keys: usize) -> Self {
        let registry = Arc::new(Registry::new(shared.name.clone(), max_keys));
        KeyedBulkheadLayer { shared, registry, key_fn }
    }

    /// Permits free right now in `key`'s partition (all of them for a key
    /// without a partition of its own: unknown, dropped or overflowed).
    pub fn available_permits(&self, key: &K) -> usize {
        self.registry.available_permits(key, self.shared.max)
    }

    /// How many partitions exist right now (idle ones are dropped as new keys
    /// come in), the overflow partition not counted; at most
    /// [`max_keys`](Self::max_keys).
    pub fn partitions(&self) -> usize {
        self.registry.partitions()
    }

    /// The most partitions kept at once.
    pub fn max_keys(&self) -> usize {
        self.registry.max_keys
    }

    /// Permits free right now in the overflow partition, once a key has
    /// needed it.
    pub fn overflow_available_permits(&self) -> Option<usize> {
        self.registry.overflow_available_permits()
    }

    /// The bulkhead's name (the `service` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<K, F: Clone> Clone for KeyedBulkheadLayer<K, F> {
    fn clone(&self) -> Self {
        KeyedBulkheadLayer { shared: self.shared.clone(), registry: self.registry.clone(), key_fn: self.key_fn.clone() }
    }
}

impl<K, F> fmt::Debug for KeyedBulkheadLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadLayer").field("bulkhead", &self.shared).finish_non_exhaustive()
    }
}

impl<S, K, F: Clone> Layer<S> for KeyedBulkheadLayer<K, F> {
    type Service = KeyedBulkhead<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBulkhead {
            inner,
            shared: self.shared.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

/// Builder of a [`KeyedBulkheadLayer`], from [`BulkheadBuilder::key`].
pub struct KeyedBulkheadBuilder<K, F> {
    base: BulkheadBuilder,
    key_fn: F,
    max_keys: usize,
    _key: PhantomData<fn() -> K>,
}

impl<K, F> KeyedBulkheadBuilder<K, F> {
    pub(crate) fn new(base: BulkheadBuilder, key_fn: F) -> Self {
        KeyedBulkheadBuilder { base, key_fn, max_keys: DEFAULT_MAX_KEYS, _key: PhantomData }
    }

    /// The most partitions kept at once (default 1024; at least 1). Past it,
    /// idle partitions are dropped; if all have calls in flight, new keys
    /// share one overflow partition (see [`KeyedBulkheadLayer`]).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }
}

impl<K: Hash + Eq, F> KeyedBulkheadBuilder<K, F> {
    /// Validate and build.
    pub fn build(self) -> Result<KeyedBulkheadLayer<K, F>, ConfigError> {
        check_nonzero("bulkhead.max_keys", self.max_keys == 0)?;
        Ok(KeyedBulkheadLayer::with_max_keys(Arc::new(self.base.shared()?), self.key_fn, self.max_keys))
    }
}

impl<K, F> fmt::Debug for KeyedBulkheadBuilder<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadBuilder")
            .field("base", &self.base)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

/// Service made by [`KeyedBulkheadLayer`].
pub struct KeyedBulkhead<S, K, F> {
    inner: S,
    shared: Arc<Shared>,
    registry: Arc<Registry<K>>,
    key_fn: F,
}

impl<S, K: Hash + Eq, F> KeyedBulkhead<S, K, F> {
    /// Permits free right now in `key`'s partition.
    pub fn available_permits(&self, key: &K) -> usize {
        self.registry.available_permits(key, self.shared.max)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, K, F: Clone> Clone for KeyedBulkhead<S, K, F> {
    fn clone(&self) -> Self {
        KeyedBulkhead {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F> fmt::Debug for KeyedBulkhead<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, Req> Service<Req> for KeyedBulkhead<S, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> K,
    K: Hash + Eq,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key_fn)(&req);
        match self.registry.try_acquire(key, self.shared.max) {
            Ok(permit) => {
                KeyedResponseFuture::done(ResponseFuture::called(self.inner.call(req), self.shared.in_flight(permit)))
            }
            Err(_) if self.shared.max_wait.is_zero() => {
                KeyedResponseFuture::done(ResponseFuture::rejected(self.shared.reject(std::time::Duration::ZERO)))
            }
            Err(sem) => {
                // The ready service goes with the request; a clone takes its place.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                KeyedResponseFuture::waiting(self.shared.wait(&sem), ready, req, self.shared.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use metrics_util::debugging::DebuggingRecorder;
    use tower::Service as _;

    use super::*;
    use crate::bulkhead::{BulkheadFull, BulkheadLayer};

    /// An inner service whose calls never end: each holds its permit while
    /// its future lives.
    fn stuck() -> impl Service<u32, Response = (), Error = BoxError, Future: Send> + Clone {
        tower::service_fn(|_: u32| std::future::pending::<Result<(), BoxError>>())
    }

    /// Whether the call was rejected (it has ended with `BulkheadFull`).
    fn rejected<F: std::future::Future<Output = Result<(), BoxError>>>(f: &mut std::pin::Pin<Box<F>>) -> bool {
        matches!(f.now_or_never(), Some(Err(e)) if e.is::<BulkheadFull>())
    }

    #[test]
    fn twenty_thousand_keys_leave_at_most_max_keys_partitions_and_fixed_series() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let layer = BulkheadLayer::builder()
            .name("keys")
            .max_concurrent_calls(1)
            .key(|r: &u32| *r)
            .max_keys(100)
            .build()
            .unwrap();
        assert_eq!(layer.max_keys(), 100);
        let mut svc = layer.layer(stuck());
        // Every call stays in flight: 100 partitions, then the overflow.
        let mut held: Vec<_> = (0..20_000u32).map(|k| Box::pin(svc.call(k))).collect();
        assert_eq!(layer.partitions(), 100);
        assert_eq!(layer.overflow_available_permits(), Some(0));
        let rejections = held.iter_mut().map(rejected).filter(|r| *r).count();
        assert_eq!(rejections, 20_000 - 101, "one overflow permit for the 19,900 keys past max_keys");
        drop(held);
        // Calls that end at once: idle partitions make room, no overflow.
        let ok = tower::service_fn(|_: u32| async { Ok::<_, BoxError>(()) });
        let mut svc = layer.layer(ok);
        for k in 20_000..40_000u32 {
            svc.call(k).now_or_never().unwrap().unwrap();
            assert!(layer.partitions() <= 100);
        }
        let series = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().labels().any(|l| l.key() == "service" && l.value() == "keys"))
            .count();
        // in flight, rejections, permit wait, partitions, overflow calls.
        assert!(series <= 5, "{series} series");
    }

    #[test]
    fn keys_past_max_keys_share_one_overflow_partition() {
        let layer =
            BulkheadLayer::builder().name("o").max_concurrent_calls(1).key(|r: &u32| *r).max_keys(2).build().unwrap();
        let mut svc = layer.layer(stuck());
        let a = svc.call(1);
        let _b = svc.call(2);
        assert_eq!(layer.partitions(), 2);
        // Both partitions busy: key 3 takes the overflow permit, key 4 finds it taken.
        let _c = svc.call(3);
        assert_eq!(layer.overflow_available_permits(), Some(0));
        assert!(rejected(&mut Box::pin(svc.call(4))), "key 4 shares key 3's overflow partition");
        assert_eq!(layer.partitions(), 2);
        // Key 1's partition goes idle: a new key gets its own partition again.
        drop(a);
        let mut e = Box::pin(svc.call(5));
        assert!((&mut e).now_or_never().is_none(), "key 5 has a partition of its own");
        assert_eq!(layer.available_permits(&5), 0);
        assert_eq!(layer.partitions(), 2);
        assert!(BulkheadLayer::builder().key(|r: &u32| *r).max_keys(0).build().is_err());
    }
}
