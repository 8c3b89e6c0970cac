//! The error a rate limiter returns for a call it does not admit.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::rate::Policy;
use crate::classify::GrpcCode;
use crate::error::{MeshError, MeshErrorKind};

/// Why a call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The limit is spent: no permit now, nor within `max_wait`.
    OverLimit,
    /// The shared store (Redis) could not decide in time and the limiter
    /// fails closed.
    StoreUnavailable,
}

/// A call was not admitted by a rate limiter.
///
/// Servers answer it with `429 Too Many Requests`, `Retry-After` and the
/// `RateLimit-Policy` / `RateLimit` fields, gRPC with `RESOURCE_EXHAUSTED`
/// and `grpc-retry-pushback-ms` (see [`ServerErrorLayer`](crate::error::ServerErrorLayer)).
/// The classifier ([`IgnoreRejections`](crate::classify::IgnoreRejections))
/// counts it as a rejection, not as a failure of the dependency. The
/// equivalent of resilience4j's `RequestNotPermitted`.
#[derive(Clone, Debug)]
pub struct RateLimited {
    name: Arc<str>,
    policy: Policy,
    retry_after: Duration,
    reason: Reason,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl RateLimited {
    pub(crate) fn new(name: Arc<str>, policy: Policy, retry_after: Duration) -> Self {
        RateLimited { name, policy, retry_after, reason: Reason::OverLimit, source: None }
    }

    #[cfg_attr(not(feature = "rate-limit-redis"), allow(dead_code))]
    pub(crate) fn store_unavailable(
        name: Arc<str>,
        policy: Policy,
        retry_after: Duration,
        source: Arc<dyn StdError + Send + Sync>,
    ) -> Self {
        RateLimited { name, policy, retry_after, reason: Reason::StoreUnavailable, source: Some(source) }
    }

    /// The name of the limiter (the `service` label of its metrics).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy (rate and burst) that applied to the call.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// How long until a call would be admitted (at the steady rate, with no
    /// other caller taking the permit first).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Why the call was not admitted.
    pub fn reason(&self) -> Reason {
        self.reason
    }
}

impl PartialEq for RateLimited {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.policy == other.policy
            && self.retry_after == other.retry_after
            && self.reason == other.reason
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::OverLimit => write!(
                f,
                "rate limiter `{}` rejected the call: over {}, retry after {:?}",
                self.name, self.policy, self.retry_after
            ),
            Reason::StoreUnavailable => write!(
                f,
                "rate limiter `{}` rejected the call: its shared store could not decide (fail closed)",
                self.name
            ),
        }
    }
}

impl StdError for RateLimited {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl MeshError for RateLimited {
    fn kind(&self) -> MeshErrorKind {
        MeshErrorKind::Rejected
    }

    fn http_status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }

    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::ResourceExhausted
    }

    /// The time until a permit, at least one millisecond (`Retry-After` is
    /// sent in whole seconds, rounded up).
    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after.max(Duration::from_millis(1)))
    }

    /// The `RateLimit-Policy` and `RateLimit` fields
    /// (see [`headers::insert`](super::headers::insert)).
    fn add_headers(&self, headers: &mut http::HeaderMap) {
        super::headers::insert(headers, self);
    }
}
