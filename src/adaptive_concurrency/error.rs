//! The error an adaptive concurrency limit returns when a call is over the limit.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::classify::GrpcCode;
use crate::error::{MeshError, MeshErrorKind};

/// A call was rejected because the adaptive limit's calls in flight were at
/// the current limit, immediately (`max_wait` zero) or after waiting
/// `max_wait` for a free slot.
///
/// Like [`BulkheadFull`](crate::bulkhead::BulkheadFull), servers answer it
/// with `503 Service Unavailable` / gRPC `RESOURCE_EXHAUSTED` (see
/// [`ServerErrorLayer`](crate::error::ServerErrorLayer)): it is load
/// shedding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConcurrencyLimited {
    name: Arc<str>,
    limit: usize,
    waited: Duration,
}

impl ConcurrencyLimited {
    pub(crate) fn new(name: Arc<str>, limit: usize, waited: Duration) -> Self {
        ConcurrencyLimited { name, limit, waited }
    }

    /// The name of the limit that rejected the call.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit when the call was rejected.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How long the call waited before it was rejected (zero when `max_wait`
    /// is zero).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for ConcurrencyLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "adaptive concurrency limit `{}` reached: {} calls in flight, waited {:?}",
            self.name, self.limit, self.waited
        )
    }
}

impl std::error::Error for ConcurrencyLimited {}

impl MeshError for ConcurrencyLimited {
    fn kind(&self) -> MeshErrorKind {
        MeshErrorKind::Rejected
    }

    fn http_status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::ResourceExhausted
    }

    /// One second, as for a full bulkhead: slots free up as soon as calls in
    /// flight finish.
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}
