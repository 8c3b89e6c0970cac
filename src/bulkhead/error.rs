//! The error a bulkhead returns when it has no permit for a call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::classify::GrpcCode;
use crate::error::{MeshError, MeshErrorKind};

/// A call was rejected because the bulkhead had no free permit, immediately
/// (`max_wait` zero) or after waiting `max_wait` for one.
///
/// Servers answer it with `503 Service Unavailable` / gRPC
/// `RESOURCE_EXHAUSTED` (see [`ServerErrorLayer`](crate::error::ServerErrorLayer)).
/// The equivalent of resilience4j's `BulkheadFullException`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkheadFull {
    name: Arc<str>,
    max_concurrent_calls: usize,
    waited: Duration,
}

impl BulkheadFull {
    pub(crate) fn new(name: Arc<str>, max_concurrent_calls: usize, waited: Duration) -> Self {
        BulkheadFull { name, max_concurrent_calls, waited }
    }

    /// The name of the bulkhead that rejected the call.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many calls the bulkhead lets run at once (per partition, for a
    /// keyed bulkhead).
    pub fn max_concurrent_calls(&self) -> usize {
        self.max_concurrent_calls
    }

    /// How long the call waited for a permit before it was rejected (zero when
    /// `max_wait` is zero).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulkhead `{}` is full: {} concurrent calls in flight, waited {:?} for a permit",
            self.name, self.max_concurrent_calls, self.waited
        )
    }
}

impl std::error::Error for BulkheadFull {}

impl MeshError for BulkheadFull {
    fn kind(&self) -> MeshErrorKind {
        MeshErrorKind::Rejected
    }

    fn http_status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::ResourceExhausted
    }

    /// One second, the smallest `Retry-After` there is: permits come back as
    /// soon as calls in flight finish, so a shed client may try again soon.
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}
