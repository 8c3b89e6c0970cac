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
//! lost (under-admission, never over).
//!
//! # Redis slow or down
//!
//! Every Redis call (connect, script load, decision) has a
//! [`timeout`](RedisRateLimiterBuilder::timeout). A failed or timed-out call
//! drops the connection; for `retry_backoff` after that, calls do not wait
//! on Redis at all, then one call tries to reconnect. Meanwhile the
//! [`FailPolicy`] decides: `Open` admits through a per-instance local
//! limit (`fallback`), `Closed` rejects with [`RateLimited`] of reason
//! [`StoreUnavailable`](super::Reason::StoreUnavailable). Nothing queues
//! (each call waits at most one timeout) and the shared limit applies again
//! as soon as Redis answers.
//!
//! # Metrics
//!
//! Labelled `service`: `tower_mesh_rate_limit_redis_calls_total`,
//! `tower_mesh_rate_limit_redis_errors_total`,
//! `tower_mesh_rate_limit_fallback_total` (calls decided by the fail
//! policy), `tower_mesh_rate_limit_leased_total` (calls admitted from a
//! lease), besides the decision counters of every rate limiter.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, ServerErrorKind};
use metrics::Counter;
use tokio::time::Instant;

use super::error::RateLimited;
use super::layer::RateLimitLayer;
use super::limiter::{gcra, try_gcra, Acquire, Gcra, Limiter, MeshClock};
use super::rate::{Policy, Rate};
use crate::config::{check_nonzero, check_range, ConfigError};

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

/// The connection and whether Redis is to be asked now.
struct Conn {
    conn: Option<(MultiplexedConnection, Arc<str>)>,
    /// After a failure: do not ask Redis before this instant.
    down_until: Option<Instant>,
}

/// A lease of tokens for one key.
struct Lease {
    tokens: u32,
    size: u32,
    granted_at: Instant,
    /// The last lease request was denied: do not ask again before this.
    denied_until: Option<Instant>,
}

/// The most keys with a lease an instance keeps (all are forgotten past it).
const MAX_LEASES: usize = 10_000;

struct Inner {
    name: Arc<str>,
    policy: Policy,
    prefix: String,
    client: Client,
    timeout: Duration,
    backoff: Duration,
    fail: FailPolicy,
    fallback: Option<Gcra>,
    max_lease: u32,
    lease_ttl: Duration,
    conn: Mutex<Conn>,
    connecting: tokio::sync::Mutex<()>,
    leases: Mutex<HashMap<String, Lease>>,
    calls: Counter,
    errors: Counter,
    fallbacks: Counter,
    leased: Counter,
    redis_calls: AtomicU64,
}

/// The shared limiter of a [`RateLimitLayer`] backed by Redis; built by
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
        RedisRateLimiterBuilder {
            url: url.into(),
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
}

impl Inner {
    fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + self.name.len() + 1 + key.len());
        k.push_str(&self.prefix);
        k.push_str(&self.name);
        k.push(':');
        k.push_str(key);
        k
    }

    /// The connection and script hash, connecting (and loading the script)
    /// when there is none and Redis is not marked down.
    async fn connection(&self) -> Result<(MultiplexedConnection, Arc<str>), StoreError> {
        if let Some(found) = self.current()? {
            return Ok(found);
        }
        // One call connects; the others wait for it (within the timeout)
        // instead of failing while nothing is known to be wrong.
        let _connecting = tokio::time::timeout(self.timeout, self.connecting.lock())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?;
        if let Some(found) = self.current()? {
            return Ok(found);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = async {
            let mut conn = self.client.get_multiplexed_async_connection_with_config(&config).await?;
            let sha: String = ::redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await?;
            Ok::<_, RedisError>((conn, Arc::<str>::from(sha)))
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok((conn, sha))) => {
                let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                c.conn = Some((conn.clone(), sha.clone()));
                c.down_until = None;
                tracing::info!(service = %self.name, "rate limiter connected to Redis");
                Ok((conn, sha))
            }
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// The open connection, `None` when there is none, `Err(Down)` while
    /// Redis is left alone after a failure.
    fn current(&self) -> Result<Option<(MultiplexedConnection, Arc<str>)>, StoreError> {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((conn, sha)) = &c.conn {
            return Ok(Some((conn.clone(), sha.clone())));
        }
        if c.down_until.is_some_and(|until| Instant::now() < until) {
            return Err(StoreError::Down);
        }
        Ok(None)
    }

    /// A Redis call failed: drop the connection and wait `backoff` before
    /// the next attempt.
    fn failed(&self, e: &StoreError) {
        self.errors.increment(1);
        if matches!(e, StoreError::Down) {
            return;
        }
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if c.conn.take().is_some() {
            tracing::warn!(service = %self.name, error = %e, "rate limiter lost Redis; applying its fail policy");
        }
        c.down_until = Some(Instant::now() + self.backoff);
    }

    async fn ask(&self, key: &str, want: u32, partial: bool) -> Result<Decision, StoreError> {
        let result = self.ask_once(key, want, partial).await;
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    async fn ask_once(&self, key: &str, want: u32, partial: bool) -> Result<Decision, StoreError> {
        let (mut conn, sha) = self.connection().await?;
        self.calls.increment(1);
        self.redis_calls.fetch_add(1, Ordering::Relaxed);
        let interval = self.policy.rate.interval().as_micros().max(1) as u64;
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&*sha).arg(1).arg(key).arg(interval).arg(self.policy.burst).arg(want).arg(u8::from(partial));
        let call = async {
            match cmd.query_async::<Vec<i64>>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    // Redis restarted or flushed its scripts: load it again.
                    let _: String = ::redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await?;
                    cmd.query_async::<Vec<i64>>(&mut conn).await
                }
                other => other,
            }
        };
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(StoreError::Redis(e)),
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        match reply[..] {
            [granted, wait_us, remaining, now] if granted >= 0 => Ok(Decision {
                granted: granted as u32,
                retry_after: Duration::from_micros(wait_us.max(0) as u64),
                remaining: remaining.max(0) as u64,
                redis_time_us: now.max(0) as u64,
            }),
            _ => Err(StoreError::BadReply),
        }
    }

    /// Redis did not decide: apply the fail policy.
    fn fail(&self, e: StoreError) -> Result<(), RateLimited> {
        self.fallbacks.increment(1);
        match (self.fail, &self.fallback) {
            (FailPolicy::Open { fallback }, Some(local)) => try_gcra(local)
                .map_err(|wait| RateLimited::new(self.name.clone(), Policy::new(fallback, self.policy.burst), wait)),
            _ => Err(RateLimited::store_unavailable(self.name.clone(), self.policy, self.backoff, Arc::new(e))),
        }
    }

    /// Exact mode: one decision per call.
    async fn decide(self: Arc<Self>, key: String) -> Result<(), RateLimited> {
        match self.ask(&key, 1, false).await {
            Ok(d) if d.granted > 0 => Ok(()),
            Ok(d) => Err(RateLimited::new(self.name.clone(), self.policy, d.retry_after)),
            Err(e) => self.fail(e),
        }
    }

    /// Leased mode: spend a token of `key`'s lease, if it has one left;
    /// `Err(wait)` while the last lease request was denied.
    fn spend_lease(&self, key: &str) -> Result<bool, Duration> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = leases.get_mut(key) else { return Ok(false) };
        let now = Instant::now();
        if lease.tokens > 0 {
            if now.duration_since(lease.granted_at) > self.lease_ttl {
                // Expired: its tokens are lost (never over-admit), and a
                // lease this slow to spend is too large.
                lease.tokens = 0;
                lease.size = (lease.size / 2).max(1);
                return Ok(false);
            }
            lease.tokens -= 1;
            return Ok(true);
        }
        match lease.denied_until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(false),
        }
    }

    /// Leased mode: take a new lease for `key` and spend one token of it.
    /// A denied lease is remembered until the tokens it asked for conform,
    /// so calls in between are denied without asking Redis.
    async fn lease(self: Arc<Self>, key: String) -> Result<(), RateLimited> {
        let size = {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            match leases.get_mut(&key) {
                Some(l) => {
                    if l.tokens == 0 && l.granted_at.elapsed() <= self.lease_ttl / 2 {
                        // The last lease was spent quickly: ask for more.
                        l.size = l.size.saturating_mul(2).min(self.max_lease);
                    }
                    l.size
                }
                None => 1,
            }
        };
        let decision = self.ask(&self.redis_key(&key), size, true).await;
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() >= MAX_LEASES && !leases.contains_key(&key) {
            leases.clear();
        }
        let now = Instant::now();
        let lease = leases.entry(key).or_insert(Lease { tokens: 0, size, granted_at: now, denied_until: None });
        match decision {
            Ok(d) if d.granted == 0 => {
                lease.denied_until = Some(now + d.retry_after);
                Err(RateLimited::new(self.name.clone(), self.policy, d.retry_after))
            }
            Ok(d) => {
                // Tokens still left from a lease taken concurrently stay.
                lease.tokens += d.granted - 1;
                lease.granted_at = now;
                // A partial lease: the other instances take the rest; do not
                // come back before a full lease could have accrued.
                lease.denied_until =
                    (d.granted < size).then(|| now + self.policy.rate.interval().saturating_mul(size - d.granted));
                Ok(())
            }
            Err(e) => {
                drop(leases);
                self.fail(e)
            }
        }
    }

    fn acquire(self: &Arc<Self>, key: String) -> Acquire<Decide> {
        if self.max_lease > 0 {
            return match self.spend_lease(&key) {
                Ok(true) => {
                    self.leased.increment(1);
                    Acquire::Admitted
                }
                Ok(false) => Acquire::Pending(Box::pin(self.clone().lease(key))),
                Err(wait) => Acquire::Denied(RateLimited::new(self.name.clone(), self.policy, wait)),
            };
        }
        Acquire::Pending(Box::pin(self.clone().decide(self.redis_key(&key))))
    }
}

impl<F> RedisRateLimiter<F> {
    /// Another handle on the same limiter (one connection, one set of leases).
    pub(crate) fn clone_handle(&self) -> RedisRateLimiter {
        RedisRateLimiter { inner: self.inner.clone(), key_fn: Global }
    }

    /// Take a permit of `key`'s shared limit.
    pub(crate) fn acquire_key(&self, key: String) -> Acquire<Decide> {
        self.inner.acquire(key)
    }
}

impl<Req> Limiter<Req> for RedisRateLimiter<Global> {
    type Pending = Decide;

    fn acquire(&self, _req: &Req) -> Acquire<Decide> {
        self.inner.acquire(String::from("global"))
    }
}

impl<Req, F> Limiter<Req> for RedisRateLimiter<ByKey<F>>
where
    F: Fn(&Req) -> Option<String>,
{
    type Pending = Decide;

    fn acquire(&self, req: &Req) -> Acquire<Decide> {
        let key = (self.key_fn.0)(req).unwrap_or_else(|| String::from("anonymous"));
        self.inner.acquire(key)
    }
}

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
        };
        let limiter = RedisRateLimiter { inner: Arc::new(inner), key_fn };
        Ok(RateLimitLayer::with_limiter(limiter, name, self.max_wait))
    }
}
