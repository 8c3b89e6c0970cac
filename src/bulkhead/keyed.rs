//! A bulkhead partitioned by a key computed from each request.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::future::{KeyedResponseFuture, ResponseFuture};
use super::layer::BulkheadBuilder;
use super::pool::{BulkheadPermit, Pool};
use super::shared::Shared;
use crate::config::ConfigError;
use crate::error::BoxError;

/// Sweep idle partitions once the map has grown to this many entries (and
/// then whenever it doubles).
const MIN_SWEEP: usize = 64;

/// One pool of permits per key. A partition nobody holds a permit of (or waits on)
/// is idle; idle partitions are dropped when the map grows, so keys with a
/// high cardinality do not leak.
pub(crate) struct Registry<K> {
    pools: Mutex<Pools<K>>,
}

struct Pools<K> {
    map: HashMap<K, Arc<Pool>>,
    sweep_at: usize,
}

impl<K: Hash + Eq> Registry<K> {
    fn new() -> Self {
        Registry { pools: Mutex::new(Pools { map: HashMap::new(), sweep_at: MIN_SWEEP }) }
    }

    /// A permit of `key`'s partition, or (when none is free) its pool to
    /// wait on.
    fn try_acquire(&self, key: K, max: usize) -> Result<BulkheadPermit, Arc<Pool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = match pools.map.get(&key) {
            Some(pool) => pool,
            None => {
                if pools.map.len() >= pools.sweep_at {
                    // An idle partition: no permit taken, and only the map
                    // holds its pool (every waiter holds a clone).
                    pools.map.retain(|_, pool| Arc::strong_count(pool) > 1 || pool.in_use());
                    pools.sweep_at = (pools.map.len() * 2).max(MIN_SWEEP);
                }
                pools.map.entry(key).or_insert_with(|| Arc::new(Pool::new(max)))
            }
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
}

/// Layer of a bulkhead with one pool of `max_concurrent_calls` permits per
/// key (per downstream dependency, tenant, ...), so one slow partition cannot
/// take every permit. Made by [`BulkheadLayer::keyed`](super::BulkheadLayer::keyed)
/// or [`BulkheadBuilder::key`].
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
pub struct KeyedBulkheadLayer<F, K> {
    shared: Arc<Shared>,
    registry: Arc<Registry<K>>,
    key_fn: F,
}

impl<F, K: Hash + Eq> KeyedBulkheadLayer<F, K> {
    pub(crate) fn new(shared: Arc<Shared>, key_fn: F) -> Self {
        KeyedBulkheadLayer { shared, registry: Arc::new(Registry::new()), key_fn }
    }

    /// Permits free right now in `key`'s partition.
    pub fn available_permits(&self, key: &K) -> usize {
        self.registry.available_permits(key, self.shared.max)
    }

    /// How many partitions exist right now (idle ones are dropped as new keys
    /// come in).
    pub fn partitions(&self) -> usize {
        self.registry.partitions()
    }

    /// The bulkhead's name (the `service` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<F: Clone, K> Clone for KeyedBulkheadLayer<F, K> {
    fn clone(&self) -> Self {
        KeyedBulkheadLayer { shared: self.shared.clone(), registry: self.registry.clone(), key_fn: self.key_fn.clone() }
    }
}

impl<F, K> fmt::Debug for KeyedBulkheadLayer<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadLayer").field("bulkhead", &self.shared).finish_non_exhaustive()
    }
}

impl<S, F: Clone, K> Layer<S> for KeyedBulkheadLayer<F, K> {
    type Service = KeyedBulkhead<S, F, K>;

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
pub struct KeyedBulkheadBuilder<F, K> {
    base: BulkheadBuilder,
    key_fn: F,
    _key: PhantomData<fn() -> K>,
}

impl<F, K> KeyedBulkheadBuilder<F, K> {
    pub(crate) fn new(base: BulkheadBuilder, key_fn: F) -> Self {
        KeyedBulkheadBuilder { base, key_fn, _key: PhantomData }
    }
}

impl<F, K: Hash + Eq> KeyedBulkheadBuilder<F, K> {
    /// Validate and build.
    pub fn build(self) -> Result<KeyedBulkheadLayer<F, K>, ConfigError> {
        Ok(KeyedBulkheadLayer::new(Arc::new(self.base.shared()?), self.key_fn))
    }
}

impl<F, K> fmt::Debug for KeyedBulkheadBuilder<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadBuilder").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Service made by [`KeyedBulkheadLayer`].
pub struct KeyedBulkhead<S, F, K> {
    inner: S,
    shared: Arc<Shared>,
    registry: Arc<Registry<K>>,
    key_fn: F,
}

impl<S, F, K: Hash + Eq> KeyedBulkhead<S, F, K> {
    /// Permits free right now in `key`'s partition.
    pub fn available_permits(&self, key: &K) -> usize {
        self.registry.available_permits(key, self.shared.max)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, F: Clone, K> Clone for KeyedBulkhead<S, F, K> {
    fn clone(&self) -> Self {
        KeyedBulkhead {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<S: fmt::Debug, F, K> fmt::Debug for KeyedBulkhead<S, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, F, K, Req> Service<Req> for KeyedBulkhead<S, F, K>
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
