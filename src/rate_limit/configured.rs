//! The limiter a [`RateLimitConfig`] describes: local, keyed or shared.

use std::fmt;
use std::sync::Arc;

use super::config::RateLimitConfig;
use super::key::{KeySpec, PeerAddr};
use super::keyed::KeyedLimiter;
use super::layer::RateLimitLayer;
use super::limiter::{Acquire, Decide, Limiter, LocalLimiter};
use crate::config::ConfigError;

type NoKey = fn(&()) -> Option<String>;

enum Kind {
    Local(LocalLimiter),
    Keyed(Arc<KeyedLimiter<String, NoKey>>),
    #[cfg(feature = "rate-limit-redis")]
    Shared(super::redis::RedisRateLimiter),
}

/// The limiter of a [`RateLimitConfig`] for HTTP (and gRPC) requests:
/// in process, per [`KeySpec`] key, or shared through Redis (`store`).
/// Built by [`RateLimitConfig::layer`]; the configured stacks use it.
pub struct ConfiguredLimiter {
    key: Option<KeySpec>,
    peer: PeerAddr,
    kind: Kind,
}

impl ConfiguredLimiter {
    /// Call `f` with the key of `req`, borrowed where it can be (`None`:
    /// the anonymous limit).
    #[inline]
    fn with_key<B, R>(&self, req: &http::Request<B>, f: impl FnOnce(Option<&str>) -> R) -> R {
        match &self.key {
            Some(spec) => spec.with_key(req, self.peer, f),
            None => f(None),
        }
    }
}

impl fmt::Debug for ConfiguredLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Local(_) => "local",
            Kind::Keyed(_) => "keyed",
            #[cfg(feature = "rate-limit-redis")]
            Kind::Shared(_) => "shared",
        };
        f.debug_struct("ConfiguredLimiter").field("kind", &kind).field("key", &self.key).finish()
    }
}

impl<B> Limiter<http::Request<B>> for ConfiguredLimiter {
    type Pending = Decide;

    #[inline]
    fn acquire(&self, req: &http::Request<B>) -> Acquire<Decide> {
        match &self.kind {
            Kind::Local(l) => match l.try_acquire() {
                Ok(()) => Acquire::Admitted,
                Err(e) => Acquire::Denied(e),
            },
            Kind::Keyed(k) => match self.with_key(req, |key| k.acquire_borrowed(key)) {
                Ok(()) => Acquire::Admitted,
                Err(e) => Acquire::Denied(e),
            },
            #[cfg(feature = "rate-limit-redis")]
            Kind::Shared(r) => match &self.key {
                Some(_) => self.with_key(req, |key| r.acquire_key(key.unwrap_or("anonymous"))),
                None => r.acquire_key("global"),
            },
        }
    }
}

impl RateLimitConfig {
    /// Validate and build the layer this config describes, named `name`:
    /// a shared limit when `store` is set, a keyed one when `key` is (other
    /// than `global`), else one in-process limit.
    pub fn layer(&self, name: &str) -> Result<RateLimitLayer<ConfiguredLimiter>, ConfigError> {
        self.layer_with_peer(name, PeerAddr::SOCKET_ADDR)
    }

    /// [`layer`](Self::layer), with `peer-ip` keys read where `peer` says
    /// (axum: `PeerAddr::of::<ConnectInfo<SocketAddr>>()`).
    pub fn layer_with_peer(
        &self,
        name: &str,
        peer: PeerAddr,
    ) -> Result<RateLimitLayer<ConfiguredLimiter>, ConfigError> {
        self.validate()?;
        let key = self.key.clone().filter(|k| *k != KeySpec::Global);
        #[cfg(feature = "rate-limit-redis")]
        if let Some(url) = &self.store {
            use super::redis::{FailPolicy, RedisRateLimiter};
            let fail = match self.on_store_error {
                super::config::StoreErrorPolicy::Open => {
                    FailPolicy::Open { fallback: self.fallback_rate.unwrap_or(self.rate) }
                }
                super::config::StoreErrorPolicy::Closed => FailPolicy::Closed,
            };
            let layer = RedisRateLimiter::builder(url.as_str())
                .name(name)
                .rate(self.rate)
                .burst(self.policy().burst)
                .max_wait(self.max_wait)
                .timeout(self.store_timeout)
                .on_error(fail)
                .lease(self.lease, std::time::Duration::from_millis(100))
                .build()?;
            let limiter = layer.limiter().clone_handle();
            return Ok(RateLimitLayer::with_limiter(
                ConfiguredLimiter { key, peer, kind: Kind::Shared(limiter) },
                name,
                self.max_wait,
            ));
        }
        let kind = match &key {
            None => Kind::Local(LocalLimiter::new(name.into(), self.policy())),
            Some(_) => {
                let layer =
                    RateLimitLayer::builder().name(name).config(self).key::<(), String, NoKey>(|_| None).build()?;
                Kind::Keyed(layer.limiter_arc())
            }
        };
        Ok(RateLimitLayer::with_limiter(ConfiguredLimiter { key, peer, kind }, name, self.max_wait))
    }
}
