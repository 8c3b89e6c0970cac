//! The kinds of failure, and their HTTP and gRPC mappings.

use std::fmt;

use http::StatusCode;

use crate::classify::GrpcCode;

/// What went wrong with a call, independent of the protocol that said so.
///
/// Each kind has one canonical HTTP status ([`http_status`](Self::http_status))
/// and gRPC code ([`grpc_code`](Self::grpc_code)), used when a server answers
/// it; several statuses and codes map to one kind on the way in (see the table
/// in the [module docs](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServiceErrorKind {
    /// The request is malformed or out of range: HTTP `400`, gRPC
    /// `INVALID_ARGUMENT`, `OUT_OF_RANGE`.
    InvalidArgument,
    /// No or bad credentials: HTTP `401`, gRPC `UNAUTHENTICATED`.
    Unauthenticated,
    /// The caller may not do this: HTTP `403`, gRPC `PERMISSION_DENIED`.
    PermissionDenied,
    /// The resource does not exist: HTTP `404`, gRPC `NOT_FOUND`.
    NotFound,
    /// The request conflicts with the resource's state: HTTP `409`, gRPC
    /// `ALREADY_EXISTS`, `ABORTED`.
    Conflict,
    /// The system is not in a state the request needs: HTTP `412`, `422`,
    /// gRPC `FAILED_PRECONDITION`.
    FailedPrecondition,
    /// Too many requests, or a quota or pool is exhausted: HTTP `429`, gRPC
    /// `RESOURCE_EXHAUSTED`; also a full [bulkhead](crate::bulkhead).
    RateLimited,
    /// The call was cancelled by its caller: HTTP `499`, gRPC `CANCELLED`.
    Cancelled,
    /// The server failed: HTTP `500` and 5xx statuses with no kind of their
    /// own, gRPC `INTERNAL`, `UNKNOWN`, `DATA_LOSS`; also any error this
    /// crate does not recognise.
    Internal,
    /// The server does not implement the operation: HTTP `501`, gRPC
    /// `UNIMPLEMENTED`.
    Unimplemented,
    /// The service cannot take the call now: HTTP `502`, `503`, gRPC
    /// `UNAVAILABLE`; also an open [circuit breaker](crate::circuit_breaker)
    /// and a service discovery has no endpoint for.
    Unavailable,
    /// The call ran out of time: HTTP `504`, `408`, gRPC `DEADLINE_EXCEEDED`;
    /// also a [timeout](crate::timeout).
    DeadlineExceeded,
    /// The connection failed (refused, reset, closed early): there is no
    /// response. A refused connection means the request never reached the
    /// server; a reset one may have been processed.
    Transport,
    /// Any other client error (4xx) the kinds above do not name, such as
    /// `405`, `410` or `413`.
    ClientError,
}

/// Every kind, in declaration order (the index of a kind's metric counter).
pub(crate) const ALL: [ServiceErrorKind; 14] = [
    ServiceErrorKind::InvalidArgument,
    ServiceErrorKind::Unauthenticated,
    ServiceErrorKind::PermissionDenied,
    ServiceErrorKind::NotFound,
    ServiceErrorKind::Conflict,
    ServiceErrorKind::FailedPrecondition,
    ServiceErrorKind::RateLimited,
    ServiceErrorKind::Cancelled,
    ServiceErrorKind::Internal,
    ServiceErrorKind::Unimplemented,
    ServiceErrorKind::Unavailable,
    ServiceErrorKind::DeadlineExceeded,
    ServiceErrorKind::Transport,
    ServiceErrorKind::ClientError,
];

impl ServiceErrorKind {
    /// The kind of an HTTP error status; `None` below `400`. Statuses of
    /// `600` and above (not standard) are [`Internal`](Self::Internal).
    ///
    /// `408 Request Timeout` is [`DeadlineExceeded`](Self::DeadlineExceeded):
    /// the server gave up waiting for the request, and a new attempt may
    /// succeed. It is the one status whose kind answers in another class
    /// (`504`, as a gateway whose upstream timed out does).
    pub fn from_http_status(status: StatusCode) -> Option<Self> {
        use ServiceErrorKind::*;
        let kind = match status.as_u16() {
            0..=399 => return None,
            400 => InvalidArgument,
            401 => Unauthenticated,
            403 => PermissionDenied,
            404 => NotFound,
            408 => DeadlineExceeded,
            409 => Conflict,
            412 | 422 => FailedPrecondition,
            429 => RateLimited,
            499 => Cancelled,
            501 => Unimplemented,
            502 | 503 => Unavailable,
            504 => DeadlineExceeded,
            code if code < 500 => ClientError,
            _ => Internal,
        };
        Some(kind)
    }

    /// The kind of a gRPC status code; `None` for `OK`.
    pub fn from_grpc_code(code: GrpcCode) -> Option<Self> {
        use ServiceErrorKind::*;
        let kind = match code {
            GrpcCode::Ok => return None,
            GrpcCode::Cancelled => Cancelled,
            GrpcCode::InvalidArgument | GrpcCode::OutOfRange => InvalidArgument,
            GrpcCode::DeadlineExceeded => DeadlineExceeded,
            GrpcCode::NotFound => NotFound,
            GrpcCode::AlreadyExists | GrpcCode::Aborted => Conflict,
            GrpcCode::PermissionDenied => PermissionDenied,
            GrpcCode::ResourceExhausted => RateLimited,
            GrpcCode::FailedPrecondition => FailedPrecondition,
            GrpcCode::Unimplemented => Unimplemented,
            GrpcCode::Unavailable => Unavailable,
            GrpcCode::Unauthenticated => Unauthenticated,
            // `UNKNOWN`, `INTERNAL`, `DATA_LOSS`, and codes added later.
            _ => Internal,
        };
        Some(kind)
    }

    /// The HTTP status a server answers this kind with.
    ///
    /// [`Transport`](Self::Transport) is `502 Bad Gateway` (the upstream could
    /// not be reached), [`ClientError`](Self::ClientError) `400` (a
    /// [`ServiceError`](super::ServiceError) of this kind answers with the
    /// downstream's own 4xx status instead, see its `MeshError` impl),
    /// [`Cancelled`](Self::Cancelled) `499` (nginx's "client closed request").
    pub fn http_status(self) -> StatusCode {
        use ServiceErrorKind::*;
        match self {
            InvalidArgument | ClientError => StatusCode::BAD_REQUEST,
            Unauthenticated => StatusCode::UNAUTHORIZED,
            PermissionDenied => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            Conflict => StatusCode::CONFLICT,
            FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Cancelled => client_closed_request(),
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Transport => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC code a server answers this kind with.
    ///
    /// [`Conflict`](Self::Conflict) is `ALREADY_EXISTS`, [`Transport`](Self::Transport)
    /// `UNAVAILABLE` (what gRPC clients report for a failed connection),
    /// [`ClientError`](Self::ClientError) `INVALID_ARGUMENT`. A
    /// [`ServiceError`](super::ServiceError) that came from a gRPC code of
    /// its kind answers with that code instead (e.g. `ABORTED`).
    pub fn grpc_code(self) -> GrpcCode {
        use ServiceErrorKind::*;
        match self {
            InvalidArgument | ClientError => GrpcCode::InvalidArgument,
            Unauthenticated => GrpcCode::Unauthenticated,
            PermissionDenied => GrpcCode::PermissionDenied,
            NotFound => GrpcCode::NotFound,
            Conflict => GrpcCode::AlreadyExists,
            FailedPrecondition => GrpcCode::FailedPrecondition,
            RateLimited => GrpcCode::ResourceExhausted,
            Cancelled => GrpcCode::Cancelled,
            Internal => GrpcCode::Internal,
            Unimplemented => GrpcCode::Unimplemented,
            Unavailable | Transport => GrpcCode::Unavailable,
            DeadlineExceeded => GrpcCode::DeadlineExceeded,
        }
    }

    /// Whether a failure of this kind is transient, so the same request may
    /// succeed if sent again (after a backoff, and after
    /// [`retry_after`](super::ServiceError::retry_after) when known).
    ///
    /// `true` for [`Unavailable`](Self::Unavailable),
    /// [`DeadlineExceeded`](Self::DeadlineExceeded),
    /// [`RateLimited`](Self::RateLimited) and [`Transport`](Self::Transport);
    /// `false` for every other kind, [`Internal`](Self::Internal) included.
    /// See the [module docs](super#retryable-kinds) for why. This says
    /// nothing about whether the request is *safe* to repeat (idempotent):
    /// that is the retry policy's call.
    pub fn is_retryable(self) -> bool {
        use ServiceErrorKind::*;
        matches!(self, Unavailable | DeadlineExceeded | RateLimited | Transport)
    }

    /// A short, stable name: the `kind` label of
    /// `tower_mesh_service_errors_total` (`invalid_argument`,
    /// `unauthenticated`, `permission_denied`, `not_found`, `conflict`,
    /// `failed_precondition`, `rate_limited`, `cancelled`, `internal`,
    /// `unimplemented`, `unavailable`, `deadline_exceeded`, `transport`,
    /// `client_error`).
    pub fn as_str(self) -> &'static str {
        use ServiceErrorKind::*;
        match self {
            InvalidArgument => "invalid_argument",
            Unauthenticated => "unauthenticated",
            PermissionDenied => "permission_denied",
            NotFound => "not_found",
            Conflict => "conflict",
            FailedPrecondition => "failed_precondition",
            RateLimited => "rate_limited",
            Cancelled => "cancelled",
            Internal => "internal",
            Unimplemented => "unimplemented",
            Unavailable => "unavailable",
            DeadlineExceeded => "deadline_exceeded",
            Transport => "transport",
            ClientError => "client_error",
        }
    }

    /// Position in [`ALL`].
    pub(crate) fn index(self) -> usize {
        use ServiceErrorKind::*;
        match self {
            InvalidArgument => 0,
            Unauthenticated => 1,
            PermissionDenied => 2,
            NotFound => 3,
            Conflict => 4,
            FailedPrecondition => 5,
            RateLimited => 6,
            Cancelled => 7,
            Internal => 8,
            Unimplemented => 9,
            Unavailable => 10,
            DeadlineExceeded => 11,
            Transport => 12,
            ClientError => 13,
        }
    }

    /// A few words for messages: "service unavailable", "not found", ...
    pub(crate) fn describe(self) -> &'static str {
        use ServiceErrorKind::*;
        match self {
            InvalidArgument => "invalid argument",
            Unauthenticated => "unauthenticated",
            PermissionDenied => "permission denied",
            NotFound => "not found",
            Conflict => "conflict",
            FailedPrecondition => "failed precondition",
            RateLimited => "rate limited",
            Cancelled => "cancelled",
            Internal => "internal error",
            Unimplemented => "not implemented",
            Unavailable => "service unavailable",
            DeadlineExceeded => "deadline exceeded",
            Transport => "transport error",
            ClientError => "client error",
        }
    }
}

impl fmt::Display for ServiceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// `499`, which `http` has no constant for.
fn client_closed_request() -> StatusCode {
    // 499 is in 100..=999, so `from_u16` cannot fail.
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The canonical upper-case name of a gRPC code (`UNAVAILABLE`).
pub(crate) fn grpc_name(code: GrpcCode) -> &'static str {
    use GrpcCode::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
