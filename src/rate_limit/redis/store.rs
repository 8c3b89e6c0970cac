//! The shared state of a [`RedisRateLimiter`](super::RedisRateLimiter): the
//! connection, the decision script, the fail policy, and the exact mode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, ServerErrorKind};
use metrics::Counter;
use tokio::time::Instant;

use super::lease::Lease;
use super::{Decision, FailPolicy, StoreError, SCRIPT};
use crate::rate_limit::error::RateLimited;
use crate::rate_limit::limiter::{try_gcra, Acquire, Decide, Gcra};
use crate::rate_limit::rate::Policy;

/// The connection and whether Redis is to be asked now.
pub(super) struct Conn {
    pub(super) conn: Option<(MultiplexedConnection, Arc<str>)>,
    /// After a failure: do not ask Redis before this instant.
    pub(super) down_until: Option<Instant>,
}

/// What a limiter and its handles share.
pub(super) struct Inner {
    pub(super) name: Arc<str>,
    pub(super) policy: Policy,
    pub(super) prefix: String,
    pub(super) client: Client,
    pub(super) timeout: Duration,
    pub(super) backoff: Duration,
    pub(super) fail: FailPolicy,
    pub(super) fallback: Option<Gcra>,
    pub(super) max_lease: u32,
    pub(super) lease_ttl: Duration,
    pub(super) conn: Mutex<Conn>,
    pub(super) connecting: tokio::sync::Mutex<()>,
    pub(super) leases: Mutex<HashMap<String, Lease>>,
    pub(super) calls: Counter,
    pub(super) errors: Counter,
    pub(super) fallbacks: Counter,
    pub(super) leased: Counter,
    pub(super) redis_calls: AtomicU64,
    pub(super) fallback_decisions: AtomicU64,
}

impl Inner {
    pub(super) fn redis_key(&self, key: &str) -> String {
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
        // One call connects; the others wait for it (within the decision's
        // timeout) instead of failing while nothing is known to be wrong.
        let _connecting = self.connecting.lock().await;
        if let Some(found) = self.current()? {
            return Ok(found);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        let sha: String = ::redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await?;
        let sha = Arc::<str>::from(sha);
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        c.conn = Some((conn.clone(), sha.clone()));
        c.down_until = None;
        tracing::info!(service = %self.name, "rate limiter connected to Redis");
        Ok((conn, sha))
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

    /// One decision: waiting for a connection, connecting, loading the
    /// script and running it all fit in one `timeout`.
    pub(super) async fn ask(&self, key: &str, want: u32, partial: bool) -> Result<Decision, StoreError> {
        let result = match tokio::time::timeout(self.timeout, self.ask_once(key, want, partial)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
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
        let reply = match cmd.query_async::<Vec<i64>>(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted or flushed its scripts: load it again.
                let _: String = ::redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await?;
                cmd.query_async::<Vec<i64>>(&mut conn).await
            }
            other => other,
        }?;
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
    pub(super) fn fail(&self, e: StoreError) -> Result<(), RateLimited> {
        self.fallbacks.increment(1);
        self.fallback_decisions.fetch_add(1, Ordering::Relaxed);
        match (self.fail, &self.fallback) {
            (FailPolicy::Open { fallback }, Some(local)) => try_gcra(local)
                .map_err(|wait| RateLimited::new(self.name.clone(), Policy::new(fallback, self.policy.burst), wait)),
            _ => Err(RateLimited::store_unavailable(self.name.clone(), self.policy, self.backoff, Arc::new(e))),
        }
    }

    /// Exact mode: one decision per call.
    pub(super) async fn decide(self: Arc<Self>, key: String) -> Result<(), RateLimited> {
        match self.ask(&key, 1, false).await {
            Ok(d) if d.granted > 0 => Ok(()),
            Ok(d) => Err(RateLimited::new(self.name.clone(), self.policy, d.retry_after)),
            Err(e) => self.fail(e),
        }
    }

    /// A permit of `key`'s shared limit: from a lease (leased mode), or
    /// decided by Redis.
    pub(super) fn acquire(self: &Arc<Self>, key: &str) -> Acquire<Decide> {
        if self.max_lease > 0 {
            return self.acquire_leased(key);
        }
        Acquire::Pending(Box::pin(self.clone().decide(self.redis_key(key))))
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError::Redis(e)
    }
}
