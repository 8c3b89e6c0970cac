//! The error a timeout returns when the call took too long.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::classify::GrpcCode;
use crate::error::{MeshError, MeshErrorKind};

/// Which timeout expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// A per-attempt timeout ([`TimeoutLayer::per_attempt`](super::TimeoutLayer::per_attempt)):
    /// a retry layer above may try again.
    Attempt,
    /// The total deadline of the call ([`TimeoutLayer::new`](super::TimeoutLayer::new),
    /// or an enclosing [`Deadline`](crate::deadline::Deadline)): no time is
    /// left for another attempt.
    Total,
}

impl TimeoutKind {
    /// `"attempt"` or `"total"` (the `kind` label of the metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            TimeoutKind::Attempt => "attempt",
            TimeoutKind::Total => "total",
        }
    }
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The call did not complete within its timeout.
///
/// Servers answer it with `504 Gateway Timeout` / gRPC `DEADLINE_EXCEEDED`
/// (see [`ServerErrorLayer`](crate::error::ServerErrorLayer)). The
/// equivalent of tower's `timeout::error::Elapsed` and of resilience4j's
/// `TimeoutException`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed {
    kind: TimeoutKind,
    after: Duration,
}

impl Elapsed {
    pub(crate) fn new(kind: TimeoutKind, after: Duration) -> Self {
        Elapsed { kind, after }
    }

    /// Which timeout expired. A per-attempt timeout cut short by the total
    /// deadline reports [`TimeoutKind::Total`].
    pub fn kind(&self) -> TimeoutKind {
        self.kind
    }

    /// How long the call was given (from the moment it was made to its
    /// effective deadline).
    pub fn timeout(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request timed out after {:?} ({} timeout)", self.after, self.kind)
    }
}

impl std::error::Error for Elapsed {}

impl MeshError for Elapsed {
    /// [`TimedOut`](MeshErrorKind::TimedOut) for a per-attempt timeout,
    /// [`DeadlineExceeded`](MeshErrorKind::DeadlineExceeded) for the total one.
    fn kind(&self) -> MeshErrorKind {
        match self.kind {
            TimeoutKind::Attempt => MeshErrorKind::TimedOut,
            TimeoutKind::Total => MeshErrorKind::DeadlineExceeded,
        }
    }

    fn http_status(&self) -> StatusCode {
        StatusCode::GATEWAY_TIMEOUT
    }

    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::DeadlineExceeded
    }
}
