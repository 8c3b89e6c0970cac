//! Errors of the discovery layer.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::classify::GrpcCode;
use crate::error::MeshError;

/// Why the discovery layer could not route a request.
///
/// Servers answer each with `503 Service Unavailable` / gRPC `UNAVAILABLE`
/// (see [`ServerErrorLayer`](crate::error::ServerErrorLayer)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The service is known but has no endpoint right now (returned at once,
    /// never after waiting).
    NoEndpoints {
        /// The logical service name.
        service: Arc<str>,
    },
    /// No endpoint source was registered for this logical name.
    UnknownService {
        /// The logical service name.
        service: String,
    },
    /// The request URI has no authority to resolve (and the layer has no fixed service).
    MissingAuthority,
    /// An endpoint given to the registry is not a valid `host:port` authority.
    InvalidEndpoint {
        /// The rejected value.
        endpoint: String,
    },
    /// The URI could not be rewritten to the chosen endpoint.
    InvalidUri {
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NoEndpoints { service } => write!(f, "service `{service}` has no endpoints"),
            DiscoveryError::UnknownService { service } => write!(f, "no endpoint source for service `{service}`"),
            DiscoveryError::MissingAuthority => f.write_str("request URI has no authority to resolve"),
            DiscoveryError::InvalidEndpoint { endpoint } => write!(f, "invalid endpoint `{endpoint}` (want host:port)"),
            DiscoveryError::InvalidUri { reason } => write!(f, "cannot rewrite the request URI: {reason}"),
        }
    }
}

impl std::error::Error for DiscoveryError {}

impl MeshError for DiscoveryError {
    fn http_status(&self) -> StatusCode {
        match self {
            DiscoveryError::MissingAuthority | DiscoveryError::InvalidUri { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn grpc_code(&self) -> GrpcCode {
        match self {
            DiscoveryError::MissingAuthority | DiscoveryError::InvalidUri { .. } => GrpcCode::Internal,
            _ => GrpcCode::Unavailable,
        }
    }
}
