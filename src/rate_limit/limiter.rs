//! The decision a [`RateLimit`](super::RateLimit) service asks for, and the
//! local (in-process) limiter: governor's GCRA on tokio's clock.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use metrics::{Counter, Histogram};

use super::error::RateLimited;
use super::rate::Policy;

/// What a [`Limiter`] says about one call.
#[derive(Debug)]
pub enum Acquire<P> {
    /// Admitted: the permit is spent.
    Admitted,
    /// Not admitted. A [`RateLimit`](super::RateLimit) service with a
    /// `max_wait` at least [`RateLimited::retry_after`] waits that long and
    /// asks again; otherwise the call fails with the error.
    Denied(RateLimited),
    /// The answer is not known yet (a shared store is asked).
    Pending(P),
}

/// Decides whether a call may go now. Implemented by the local limiter
/// ([`RateLimitLayer`](super::RateLimitLayer)), the keyed one
/// ([`KeyedRateLimitLayer`](super::KeyedRateLimitLayer)) and, with feature
/// `rate-limit-redis`, the shared one (`RedisRateLimiter`).
///
/// A decision spends the permit it admits: `acquire` is only called by
/// `call`, never by `poll_ready`, so a service that is made ready and then
/// dropped takes nothing from the limit.
pub trait Limiter<Req> {
    /// The decision of a limiter that must ask elsewhere.
    type Pending: Future<Output = Result<(), RateLimited>>;

    /// Try to take a permit for `req`.
    fn acquire(&self, req: &Req) -> Acquire<Self::Pending>;
}

/// The decision of a call that asks a shared store.
pub type Decide = std::pin::Pin<Box<dyn Future<Output = Result<(), RateLimited>> + Send>>;

/// Tokio's clock for governor: paused time in tests moves the limiter too.
#[derive(Clone, Debug)]
pub(crate) struct MeshClock {
    origin: tokio::time::Instant,
}

impl MeshClock {
    pub(crate) fn new() -> Self {
        MeshClock { origin: tokio::time::Instant::now() }
    }
}

impl Clock for MeshClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        // Offset by one second so that the first instant is not zero
        // (governor's empty state).
        Nanos::from(self.origin.elapsed() + Duration::from_secs(1))
    }
}

pub(crate) type Gcra = governor::RateLimiter<NotKeyed, InMemoryState, MeshClock, NoOpMiddleware<Nanos>>;

/// A governor GCRA limiter for `policy`.
pub(crate) fn gcra(policy: Policy, clock: MeshClock) -> Gcra {
    let quota = governor::Quota::with_period(policy.rate.interval())
        .expect("a Rate's interval is at least one nanosecond")
        .allow_burst(std::num::NonZeroU32::new(policy.burst.max(1)).expect("burst is at least 1"));
    governor::RateLimiter::direct_with_clock(quota, clock)
}

/// Take a permit from `gcra`: `Ok`, or how long until one.
#[inline]
pub(crate) fn try_gcra(gcra: &Gcra) -> Result<(), Duration> {
    match gcra.check() {
        Ok(()) => Ok(()),
        Err(not_until) => Err(not_until.wait_time_from(gcra.clock().now())),
    }
}

/// The in-process limiter of a [`RateLimitLayer`](super::RateLimitLayer):
/// one GCRA for every call.
pub struct LocalLimiter {
    name: Arc<str>,
    policy: Policy,
    gcra: Gcra,
}

impl LocalLimiter {
    pub(crate) fn new(name: Arc<str>, policy: Policy) -> Self {
        LocalLimiter { gcra: gcra(policy, MeshClock::new()), name, policy }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Take a permit without making a call: `Ok`, or the rejection.
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        try_gcra(&self.gcra).map_err(|wait| RateLimited::new(self.name.clone(), self.policy, wait))
    }
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter").field("name", &self.name).field("policy", &self.policy).finish()
    }
}

impl<Req> Limiter<Req> for LocalLimiter {
    type Pending = std::future::Ready<Result<(), RateLimited>>;

    #[inline]
    fn acquire(&self, _req: &Req) -> Acquire<Self::Pending> {
        match try_gcra(&self.gcra) {
            Ok(()) => Acquire::Admitted,
            Err(wait) => Acquire::Denied(RateLimited::new(self.name.clone(), self.policy, wait)),
        }
    }
}

/// Name, wait and metric handles of one rate limit layer.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) max_wait: Duration,
    admitted: Counter,
    rejected: Counter,
    waited: Histogram,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit").field("name", &self.name).field("max_wait", &self.max_wait).finish()
    }
}

impl Shared {
    /// Register the metric handles once, labelled with the limiter's name.
    pub(crate) fn new(name: Arc<str>, max_wait: Duration) -> Self {
        let label = name.to_string();
        Shared {
            admitted: metrics::counter!("tower_mesh_rate_limit_decisions_total", "service" => label.clone(), "decision" => "admitted"),
            rejected: metrics::counter!("tower_mesh_rate_limit_decisions_total", "service" => label.clone(), "decision" => "rejected"),
            waited: metrics::histogram!("tower_mesh_rate_limit_wait_seconds", "service" => label),
            name,
            max_wait,
        }
    }

    #[inline]
    pub(crate) fn admitted(&self) {
        self.admitted.increment(1);
    }

    #[cold]
    pub(crate) fn rejected(&self, e: &RateLimited) {
        self.rejected.increment(1);
        tracing::debug!(
            service = %self.name,
            policy = %e.policy(),
            retry_after_ms = e.retry_after().as_millis() as u64,
            reason = ?e.reason(),
            "rate limited, call rejected"
        );
    }

    pub(crate) fn record_wait(&self, waited: Duration) {
        self.waited.record(waited.as_secs_f64());
    }
}
