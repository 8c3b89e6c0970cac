//! The bulkhead layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::{BulkheadConfig, MAX_PERMITS};
use super::keyed::{KeyedBulkheadBuilder, KeyedBulkheadLayer};
use super::pool::{BulkheadPermit, Pool};
use super::service::Bulkhead;
use super::shared::Shared;
use crate::config::ConfigError;

const DEFAULT_NAME: &str = "bulkhead";

/// Layer that limits how many calls run at once: resilience4j's semaphore
/// `Bulkhead`, or tower's `GlobalConcurrencyLimitLayer` with a maximum wait
/// and a typed rejection.
///
/// All services the layer makes (and their clones) share one pool of
/// `max_concurrent_calls` permits. See the [module docs](super) for the
/// semantics.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::bulkhead::{BulkheadFull, BulkheadLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bulkhead = BulkheadLayer::builder()
///     .name("inventory")
///     .max_concurrent_calls(2)
///     .max_wait(Duration::from_millis(10))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(bulkhead.clone())
///     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) });
///
/// assert_eq!(svc.clone().oneshot(21).await.unwrap(), 42);
/// assert_eq!(bulkhead.available_permits(), 2);
///
/// // A call that finds no permit within `max_wait` fails with `BulkheadFull`.
/// let _held = (bulkhead.try_acquire(), bulkhead.try_acquire());
/// let err = svc.oneshot(1).await.unwrap_err();
/// assert!(err.downcast_ref::<BulkheadFull>().is_some());
/// # }
/// ```
#[derive(Clone)]
pub struct BulkheadLayer {
    pool: Arc<Pool>,
    shared: Arc<Shared>,
}

impl BulkheadLayer {
    /// A bulkhead named `"bulkhead"` letting `max` calls run at once and
    /// rejecting any other call immediately (`max_wait` zero).
    ///
    /// `new` does not validate: `new(0)` rejects every call. Use
    /// [`builder`](Self::builder) to get a [`ConfigError`] instead.
    pub fn new(max: usize) -> Self {
        Self::from_shared(Shared::new(DEFAULT_NAME.into(), max.min(MAX_PERMITS), Duration::ZERO))
    }

    /// A builder, starting from [`BulkheadConfig::default`] (25 calls, no wait).
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder { name: None, config: BulkheadConfig::default() }
    }

    /// A layer from a validated config, named `"bulkhead"`.
    pub fn from_config(config: &BulkheadConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// A bulkhead with one pool of `max` permits per key (per dependency,
    /// per tenant, ...), the key being computed from each request by `key_fn`;
    /// calls are rejected immediately when their partition is full. See
    /// [`KeyedBulkheadLayer`]; use [`BulkheadBuilder::key`] to set a name and
    /// a maximum wait.
    pub fn keyed<Req, K, F>(max: usize, key_fn: F) -> KeyedBulkheadLayer<K, F>
    where
        F: Fn(&Req) -> K,
        K: std::hash::Hash + Eq,
    {
        KeyedBulkheadLayer::new(
            Arc::new(Shared::new(DEFAULT_NAME.into(), max.min(MAX_PERMITS), Duration::ZERO)),
            key_fn,
        )
    }

    fn from_shared(shared: Shared) -> Self {
        BulkheadLayer { pool: Arc::new(Pool::new(shared.max)), shared: Arc::new(shared) }
    }

    /// Permits free in the pool right now.
    pub fn available_permits(&self) -> usize {
        self.pool.available_permits()
    }

    /// The bulkhead's name (the `service` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Take a permit out of the pool, if one is free, without making a call:
    /// it is returned when the guard is dropped. Useful to reserve capacity, or
    /// in tests.
    pub fn try_acquire(&self) -> Option<BulkheadPermit> {
        self.pool.try_acquire()
    }
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("bulkhead", &self.shared)
            .field("available_permits", &self.pool.available_permits())
            .finish()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, self.pool.clone(), self.shared.clone())
    }
}

/// Builder of a [`BulkheadLayer`] (or, with [`key`](Self::key), of a
/// [`KeyedBulkheadLayer`]).
#[derive(Clone, Debug)]
pub struct BulkheadBuilder {
    name: Option<String>,
    config: BulkheadConfig,
}

impl BulkheadBuilder {
    /// The name used in errors, logs and as the `service` label of the
    /// metrics. Default `"bulkhead"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many calls may run at once. Default 25.
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.config.max_concurrent_calls = max;
        self
    }

    /// How long a call may wait for a permit before it is rejected. Default
    /// zero: reject at once.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// Take every value from `config`.
    pub fn config(mut self, config: &BulkheadConfig) -> Self {
        self.config = config.clone();
        self
    }

    /// Partition the bulkhead: one pool of `max_concurrent_calls` permits per
    /// key computed by `key_fn` from each request.
    pub fn key<Req, K, F>(self, key_fn: F) -> KeyedBulkheadBuilder<K, F>
    where
        F: Fn(&Req) -> K,
    {
        KeyedBulkheadBuilder::new(self, key_fn)
    }

    /// Validate and build.
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        Ok(BulkheadLayer::from_shared(self.shared()?))
    }

    pub(crate) fn shared(self) -> Result<Shared, ConfigError> {
        self.config.validate()?;
        let name: Arc<str> = self.name.as_deref().unwrap_or(DEFAULT_NAME).into();
        Ok(Shared::new(name, self.config.max_concurrent_calls, self.config.max_wait))
    }
}
