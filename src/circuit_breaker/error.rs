//! The rejection error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::CircuitState;
use crate::classify::GrpcCode;
use crate::error::{MeshError, MeshErrorKind};

/// A call was rejected because the circuit breaker does not admit calls
/// (open, forced open, or half-open with all probe slots taken).
///
/// Returned (boxed, as a [`BoxError`](crate::BoxError)) by the response
/// future, never by `poll_ready`. Maps to `503 Service Unavailable` /
/// gRPC `UNAVAILABLE`, with `Retry-After` when the breaker knows when it will
/// admit calls again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    pub(crate) name: Arc<str>,
    pub(crate) state: CircuitState,
    pub(crate) retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// The breaker's name (the `service` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state the breaker was in when it rejected the call.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// How long until the breaker may admit calls again: the rest of the open
    /// wait; `None` when unknown (forced open, half-open with every probe slot
    /// taken).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker `{}` is {} and does not permit calls", self.name, self.state)?;
        if let Some(d) = self.retry_after {
            write!(f, " (retry after {d:?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {}

impl MeshError for CircuitOpen {
    fn kind(&self) -> MeshErrorKind {
        MeshErrorKind::Rejected
    }
    fn http_status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::Unavailable
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}
