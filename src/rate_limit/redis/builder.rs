//! The builder of a [`RedisRateLimiter`] layer.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::Client;

use super::store::{Conn, Inner};
use super::{ByKey, FailPolicy, Global, RedisRateLimiter};
use crate::config::{check_nonzero, check_range, ConfigError};
use crate::rate_limit::layer::RateLimitLayer;
use crate::rate_limit::limiter::{gcra, MeshClock};
use crate::rate_limit::rate::{Policy, Rate};

/// Builder of a [`RedisRateLimiter`] layer, from [`RedisRateLimiter::builder`].
#[derive(Clone)]
pub struct RedisRateLimiterBuilder {
    url: String,
    name: String,
    rate: Rate,
    burst: Option<u32>,
    max_wait: Duration,
    prefix: String,
    timeout: Duration,
    backoff: Duration,
    fail: Option<FailPolicy>,
    max_lease: u32,
    lease_ttl: Duration,
}

impl RedisRateLimiterBuilder {
    pub(super) fn new(url: String) -> Self {
        RedisRateLimiterBuilder {
            url,
            name: "rate_limit".into(),
            rate: Rate::per_second(100).expect("100/s is a rate"),
            burst: None,
            max_wait: Duration::ZERO,
            prefix: "tower-mesh:rl:".into(),
            timeout: Duration::from_millis(50),
            backoff: Duration::from_millis(500),
            fail: None,
            max_lease: 0,
            lease_ttl: Duration::from_millis(100),
        }
    }
}

impl fmt::Debug for RedisRateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A password in the URL stays out.
        f.debug_struct("RedisRateLimiterBuilder")
            .field("url", &crate::redact::RedactedUrl(self.url.as_str()))
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("fail", &self.fail)
            .field("max_lease", &self.max_lease)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl RedisRateLimiterBuilder {
    /// The limit's name: part of its Redis key, the `service` label of the
    /// metrics. Default `"rate_limit"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The shared steady rate. Default `100/s`.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rate = rate;
        self
    }

    /// The most calls admitted at once, across all instances. Default: the
    /// rate's count.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// How long a call may wait for a permit (each wait asks Redis again).
    /// Default zero.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The prefix of the Redis keys. Default `tower-mesh:rl:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The timeout of every Redis call. Default 50 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to leave Redis alone after a failure before one call tries
    /// to reconnect. Default 500 ms.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// What to do when Redis cannot decide. Default: fail open with a local
    /// limit of the shared rate.
    pub fn on_error(mut self, policy: FailPolicy) -> Self {
        self.fail = Some(policy);
        self
    }

    /// Leased mode: take up to `max_lease` tokens at a time from Redis and
    /// spend them locally; unspent tokens expire after `ttl`. Zero (the
    /// default) is exact mode.
    pub fn lease(mut self, max_lease: u32, ttl: Duration) -> Self {
        self.max_lease = max_lease;
        self.lease_ttl = ttl;
        self
    }

    /// Build a layer with one shared limit for every call.
    pub fn build(self) -> Result<RateLimitLayer<RedisRateLimiter<Global>>, ConfigError> {
        self.build_with(Global)
    }

    /// Build a layer with one shared limit per key computed by `key_fn`.
    pub fn build_keyed<F>(self, key_fn: F) -> Result<RateLimitLayer<RedisRateLimiter<ByKey<F>>>, ConfigError> {
        self.build_with(ByKey(key_fn))
    }

    fn build_with<F>(self, key_fn: F) -> Result<RateLimitLayer<RedisRateLimiter<F>>, ConfigError> {
        check_nonzero("rate_limit.burst", self.burst == Some(0))?;
        check_nonzero("rate_limit.store_timeout", self.timeout.is_zero())?;
        check_range("rate_limit.store_timeout", self.timeout.as_secs_f64(), 0.0, 60.0)?;
        check_range("rate_limit.lease", f64::from(self.max_lease), 0.0, 100_000.0)?;
        let client = Client::open(self.url.as_str()).map_err(|_| ConfigError::Conflict {
            field: "rate_limit.store",
            other: "rate_limit.store",
            reason: "not a valid redis:// URL",
        })?;
        let policy = Policy::new(self.rate, self.burst.unwrap_or(self.rate.count()));
        let fail = self.fail.unwrap_or(FailPolicy::Open { fallback: self.rate });
        let fallback = match fail {
            FailPolicy::Open { fallback } => Some(gcra(Policy::new(fallback, policy.burst), MeshClock::new())),
            FailPolicy::Closed => None,
        };
        let name: Arc<str> = self.name.as_str().into();
        let label = self.name.clone();
        let inner = Inner {
            calls: metrics::counter!("tower_mesh_rate_limit_redis_calls_total", "service" => label.clone()),
            errors: metrics::counter!("tower_mesh_rate_limit_redis_errors_total", "service" => label.clone()),
            fallbacks: metrics::counter!("tower_mesh_rate_limit_fallback_total", "service" => label.clone()),
            leased: metrics::counter!("tower_mesh_rate_limit_leased_total", "service" => label),
            name: name.clone(),
            policy,
            prefix: self.prefix,
            client,
            timeout: self.timeout,
            backoff: self.backoff,
            fail,
            fallback,
            max_lease: self.max_lease,
            lease_ttl: self.lease_ttl,
            conn: Mutex::new(Conn { conn: None, down_until: None }),
            connecting: tokio::sync::Mutex::new(()),
            leases: Mutex::new(HashMap::new()),
            redis_calls: AtomicU64::new(0),
            fallback_decisions: AtomicU64::new(0),
        };
        let limiter = RedisRateLimiter { inner: Arc::new(inner), key_fn };
        Ok(RateLimitLayer::with_limiter(limiter, name, self.max_wait))
    }
}
