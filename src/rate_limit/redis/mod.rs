//! One rate limit shared by every instance of a service, kept in Redis.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::rate_limit::redis::{FailPolicy, RedisRateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // 1,000 requests per second across all instances, 50 at once; if Redis
//! // does not answer within 20 ms, each instance admits 250/s on its own.
//! let limit = RedisRateLimiter::builder("redis://127.0.0.1:6379")
//!     .name("api")
//!     .rate("1000/s".parse().unwrap())
//!     .burst(50)
//!     .timeout(Duration::from_millis(20))
//!     .on_error(FailPolicy::Open { fallback: "250/s".parse().unwrap() })
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("ok") });
//! let _ = svc.oneshot(()).await;
//! # }
//! ```
//!
//! # Exact mode (the default)
//!
//! Each call runs one Lua script (`EVALSHA`, loaded with `SCRIPT LOAD` once
//! per connection and again on `NOSCRIPT`): GCRA on Redis's own clock
//! (`TIME`), so the instances' clocks do not matter, one key per limit
//! (`<prefix><name>:<key>`) holding the theoretical arrival time, with an
//! expiry at the instant the bucket would be full again — idle keys vanish.
//! The shared limit is exact: over a span `d`, at most `burst + rate × d`
//! calls across all instances.
//!
//! # Leased mode ([`lease`](RedisRateLimiterBuilder::lease))
//!
//! Each instance takes tokens from the shared limit in batches (a *lease*)
//! and spends them locally, so Redis sees one operation per lease instead
//! of one per call. The lease size adapts to the local rate: it doubles
//! (up to the maximum) when a lease is spent within `lease_ttl`, halves
//! when tokens expire unspent. Every token still comes out of the shared
//! GCRA, so the total over a run stays within `burst + rate × d`; what a
//! lease allows is spending tokens later than they were granted: **within
//! any window, at most `max_lease × instances` calls more than the exact
//! limit**, and tokens left when a lease expires (after `lease_ttl`) are
//! lost (under-admission, never over). An instance holds at most
//! `max_lease` tokens of a key; while its lease request is on its way,
//! other calls for that key are decided one by one, as in exact mode.
//!
//! # Redis slow or down
//!
//! Every decision — waiting for the connection, connecting, loading the
//! script and running it — fits in one
//! [`timeout`](RedisRateLimiterBuilder::timeout). A failed or timed-out call
//! drops the connection; for `retry_backoff` after that, calls do not wait
//! on Redis at all, then one call tries to reconnect. Meanwhile the
//! [`FailPolicy`] decides: `Open` admits through a per-instance local
//! limit (`fallback`), `Closed` rejects with [`RateLimited`](super::RateLimited) of reason
//! [`StoreUnavailable`](super::Reason::StoreUnavailable). Nothing queues
//! (each call waits at most one timeout) and the shared limit applies again
//! as soon as Redis answers. [`RedisRateLimiter::fallback_decisions`]
//! counts the calls the policy decided.
//!
//! # Metrics
//!
//! Labelled `service`: `tower_mesh_rate_limit_redis_calls_total`,
//! `tower_mesh_rate_limit_redis_errors_total`,
//! `tower_mesh_rate_limit_fallback_total` (calls decided by the fail
//! policy), `tower_mesh_rate_limit_leased_total` (calls admitted from a
//! lease), besides the decision counters of every rate limiter.

mod builder;
mod lease;
mod store;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::RedisError;

pub use self::builder::RedisRateLimiterBuilder;
use self::store::Inner;
use super::limiter::{Acquire, Limiter};
use super::rate::{Policy, Rate};

/// The GCRA decision, atomic in Redis. `KEYS[1]` the limit's key; `ARGV`:
/// emission interval (µs), burst, tokens wanted, `1` to accept fewer.
/// Returns `{granted, retry_after_us, remaining, redis_time_us}`.
pub const SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local partial = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local available = math.floor((now + tau - tat) / interval)
local grant = want
if available < want then
  if partial and available > 0 then
    grant = available
  else
    return {0, tat + interval * want - tau - now, math.max(available, 0), now}
  end
end
local new_tat = tat + interval * grant
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {grant, 0, available - grant, now}
"#;

/// What a limiter does when Redis cannot decide in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPolicy {
    /// Admit through a local, per-instance limit of `fallback` (with the
    /// shared limit's burst). Set it to about the shared rate divided by
    /// the number of instances.
    Open {
        /// The per-instance rate while Redis is unavailable.
        fallback: Rate,
    },
    /// Reject every call until Redis answers again.
    Closed,
}

/// The error of a Redis call that did not decide.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// No answer within the timeout.
    Timeout(Duration),
    /// Redis failed (connection refused or lost, server error).
    Redis(RedisError),
    /// Redis is marked down after a failure; not asked until the backoff ends.
    Down,
    /// The script answered something unexpected.
    BadReply,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout(t) => write!(f, "Redis did not answer within {t:?}"),
            StoreError::Redis(e) => write!(f, "Redis failed: {e}"),
            StoreError::Down => f.write_str("Redis is unavailable (waiting before reconnecting)"),
            StoreError::BadReply => f.write_str("unexpected reply from the rate limit script"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Redis(e) => Some(e),
            _ => None,
        }
    }
}

/// One decision of the shared limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Tokens granted (0: denied).
    pub granted: u32,
    /// When denied, how long until the tokens asked for conform.
    pub retry_after: Duration,
    /// Tokens left in the shared burst after this decision.
    pub remaining: u64,
    /// Redis's clock at the decision, in microseconds since the Unix epoch.
    pub redis_time_us: u64,
}

/// The shared limiter of a [`RateLimitLayer`](super::RateLimitLayer) backed by Redis; built by
/// [`RedisRateLimiter::builder`]. See the [module docs](self).
///
/// `F` computes each call's key (one shared limit per key); the default,
/// [`Global`], is one limit for every call.
pub struct RedisRateLimiter<F = Global> {
    inner: Arc<Inner>,
    key_fn: F,
}

/// One shared limit for every call (the key `global`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

/// A key function for [`RedisRateLimiter`]: `None` puts the call in the
/// `anonymous` limit.
#[derive(Clone, Copy, Debug)]
pub struct ByKey<F>(pub F);

impl<F> fmt::Debug for RedisRateLimiter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.inner.name)
            .field("policy", &self.inner.policy)
            .field("timeout", &self.inner.timeout)
            .field("fail", &self.inner.fail)
            .field("max_lease", &self.inner.max_lease)
            .finish_non_exhaustive()
    }
}

pub use super::limiter::Decide;

impl RedisRateLimiter {
    /// A builder for a limiter on the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder::new(url.into())
    }
}

impl<F> RedisRateLimiter<F> {
    /// The shared policy.
    pub fn policy(&self) -> Policy {
        self.inner.policy
    }

    /// Ask Redis for up to `want` tokens of `key`'s shared limit (all or
    /// nothing unless `partial`) — the decision the layer makes, without a
    /// call and without the fail policy.
    pub async fn try_acquire_n(&self, key: &str, want: u32, partial: bool) -> Result<Decision, StoreError> {
        self.inner.ask(&self.inner.redis_key(key), want, partial).await
    }

    /// How many decisions this limiter has asked Redis for.
    pub fn redis_calls(&self) -> u64 {
        self.inner.redis_calls.load(Ordering::Relaxed)
    }

    /// How many calls the fail policy decided (Redis failed, timed out or
    /// was left alone after a failure).
    pub fn fallback_decisions(&self) -> u64 {
        self.inner.fallback_decisions.load(Ordering::Relaxed)
    }
}

impl<F> RedisRateLimiter<F> {
    /// Another handle on the same limiter (one connection, one set of leases).
    pub(crate) fn clone_handle(&self) -> RedisRateLimiter {
        RedisRateLimiter { inner: self.inner.clone(), key_fn: Global }
    }

    /// Take a permit of `key`'s shared limit.
    pub(crate) fn acquire_key(&self, key: &str) -> Acquire<Decide> {
        self.inner.acquire(key)
    }
}

impl<Req> Limiter<Req> for RedisRateLimiter<Global> {
    type Pending = Decide;

    fn acquire(&self, _req: &Req) -> Acquire<Decide> {
        self.inner.acquire("global")
    }
}

impl<Req, F> Limiter<Req> for RedisRateLimiter<ByKey<F>>
where
    F: Fn(&Req) -> Option<String>,
{
    type Pending = Decide;

    fn acquire(&self, req: &Req) -> Acquire<Decide> {
        match (self.key_fn.0)(req) {
            Some(key) => self.inner.acquire(&key),
            None => self.inner.acquire("anonymous"),
        }
    }
}
