//! The rate limit layer and its builder.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::RateLimitConfig;
use super::error::RateLimited;
use super::keyed::{KeyedLimiter, KeyedRateLimitBuilder};
use super::limiter::{LocalLimiter, Shared};
use super::rate::{Policy, Rate};
use super::service::RateLimit;
use crate::config::ConfigError;

const DEFAULT_NAME: &str = "rate_limit";

/// Layer that limits the rate of calls: GCRA with a rate and a burst, in
/// process ([`LocalLimiter`], the default), per key
/// ([`KeyedLimiter`], see [`RateLimitBuilder::key`]) or shared by every
/// instance through Redis (`RedisRateLimiter`, feature `rate-limit-redis`).
///
/// All services the layer makes (and their clones) share one limiter. See
/// the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::rate_limit::{RateLimitLayer, RateLimited};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // 10 calls per second, 2 at once.
/// let limit = RateLimitLayer::builder().name("search").rate("10/s".parse().unwrap()).burst(2).build().unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(limit.clone())
///     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) });
///
/// assert_eq!(svc.clone().oneshot(1).await.unwrap(), 2);
/// assert_eq!(svc.clone().oneshot(2).await.unwrap(), 4);
/// let err = svc.oneshot(3).await.unwrap_err();
/// let err = err.downcast_ref::<RateLimited>().unwrap();
/// assert!(err.retry_after() <= Duration::from_millis(100));
/// # }
/// ```
pub struct RateLimitLayer<L = LocalLimiter> {
    limiter: Arc<L>,
    shared: Arc<Shared>,
}

impl<L> Clone for RateLimitLayer<L> {
    fn clone(&self) -> Self {
        RateLimitLayer { limiter: self.limiter.clone(), shared: self.shared.clone() }
    }
}

impl RateLimitLayer {
    /// A limiter named `"rate_limit"` admitting `rate` with bursts of up to
    /// `burst` calls (zero is taken as 1), rejecting at once what is over.
    pub fn new(rate: Rate, burst: u32) -> Self {
        let name: Arc<str> = DEFAULT_NAME.into();
        RateLimitLayer {
            limiter: Arc::new(LocalLimiter::new(name.clone(), Policy::new(rate, burst))),
            shared: Arc::new(Shared::new(name, Duration::ZERO)),
        }
    }

    /// A builder, starting from [`RateLimitConfig::default`] (`100/s`).
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder { name: None, config: RateLimitConfig::default() }
    }

    /// A layer from a validated config, named `"rate_limit"`.
    pub fn from_config(config: &RateLimitConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// Take a permit without making a call (to reserve capacity, or in tests).
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        self.limiter.try_acquire()
    }
}

impl<L> RateLimitLayer<L> {
    /// A layer around any [`Limiter`](super::Limiter), with a name (the
    /// `service` label of the decision metrics) and a maximum wait.
    pub fn with_limiter(limiter: L, name: impl Into<Arc<str>>, max_wait: Duration) -> Self {
        RateLimitLayer { limiter: Arc::new(limiter), shared: Arc::new(Shared::new(name.into(), max_wait)) }
    }

    /// The limiter.
    pub fn limiter(&self) -> &L {
        &self.limiter
    }

    pub(crate) fn limiter_arc(&self) -> Arc<L> {
        self.limiter.clone()
    }

    /// The limiter's name (the `service` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How long a call may wait for a permit.
    pub fn max_wait(&self) -> Duration {
        self.shared.max_wait
    }
}

impl<L: fmt::Debug> fmt::Debug for RateLimitLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("max_wait", &self.shared.max_wait)
            .finish()
    }
}

impl<S, L> Layer<S> for RateLimitLayer<L> {
    type Service = RateLimit<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone(), self.shared.clone())
    }
}

/// Builder of a [`RateLimitLayer`] (or, with [`key`](Self::key), of a keyed one).
#[derive(Clone, Debug)]
pub struct RateLimitBuilder {
    name: Option<String>,
    config: RateLimitConfig,
}

impl RateLimitBuilder {
    /// The name used in errors, logs, the `RateLimit-Policy` field and as
    /// the `service` label of the metrics. Default `"rate_limit"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The steady rate. Default `100/s`.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.config.rate = rate;
        self
    }

    /// The most calls admitted at once. Default: the rate's count.
    pub fn burst(mut self, burst: u32) -> Self {
        self.config.burst = Some(burst);
        self
    }

    /// How long a call may wait for a permit before it is rejected. Default
    /// zero. The wait ends early at the deadline of an enclosing
    /// [`Deadline`](crate::deadline::Deadline) scope.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// Take every value from `config`.
    pub fn config(mut self, config: &RateLimitConfig) -> Self {
        self.config = config.clone();
        self
    }

    /// One limit per key computed by `key_fn` from each request (an API key
    /// header, a tenant, a peer address; `None` puts the request in one
    /// shared "anonymous" limit), with at most `max_keys` keys tracked.
    pub fn key<Req, K, F>(self, key_fn: F) -> KeyedRateLimitBuilder<K, F>
    where
        F: Fn(&Req) -> Option<K>,
        K: Hash + Eq,
    {
        KeyedRateLimitBuilder::new(self, key_fn)
    }

    /// Validate and build.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        let (name, config) = self.validated()?;
        let limiter = LocalLimiter::new(name.clone(), config.policy());
        Ok(RateLimitLayer::with_limiter(limiter, name, config.max_wait))
    }

    /// The name and the validated config.
    pub(crate) fn validated(self) -> Result<(Arc<str>, RateLimitConfig), ConfigError> {
        self.config.validate()?;
        Ok((self.name.as_deref().unwrap_or(DEFAULT_NAME).into(), self.config))
    }
}

/// A rate limit layer with one limit per key: [`RateLimitLayer`] with a
/// [`KeyedLimiter`].
pub type KeyedRateLimitLayer<K, F> = RateLimitLayer<KeyedLimiter<K, F>>;
