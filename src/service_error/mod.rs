//! One error type for any failed call: [`ServiceError`].
//!
//! A client gets a `ServiceError` whatever failed — an HTTP error status, a
//! gRPC status, a refused connection, a tower-mesh layer's rejection — with
//! its [`ServiceErrorKind`], the status or code it came from, a message, an
//! excerpt of the error body for logs, `retry_after`, and whether a retry may
//! help. A server can answer one: it implements [`MeshError`], so
//! [`ServerErrorLayer`] answers it with the right status or gRPC code, and
//! [`ServiceError::to_http_response`] / [`ServiceError::to_grpc_response`]
//! build the answer directly.
//!
//! - [`MapServiceErrorLayer`] wraps an HTTP client and turns error responses and
//!   transport errors into `ServiceError`s (inside a [`BoxError`]).
//! - [`ServiceError::from_http`], [`from_grpc`](ServiceError::from_grpc),
//!   [`from_grpc_headers`](ServiceError::from_grpc_headers) and
//!   [`from_error`](ServiceError::from_error) build one by hand.
//!
//! # Kinds
//!
//! | kind | from HTTP | from gRPC | answered HTTP | answered gRPC | retryable |
//! |---|---|---|---|---|---|
//! | `InvalidArgument` | 400 | `INVALID_ARGUMENT`, `OUT_OF_RANGE` | 400 | `INVALID_ARGUMENT` | no |
//! | `Unauthenticated` | 401 | `UNAUTHENTICATED` | 401 | `UNAUTHENTICATED` | no |
//! | `PermissionDenied` | 403 | `PERMISSION_DENIED` | 403 | `PERMISSION_DENIED` | no |
//! | `NotFound` | 404 | `NOT_FOUND` | 404 | `NOT_FOUND` | no |
//! | `Conflict` | 409 | `ALREADY_EXISTS`, `ABORTED` | 409 | `ALREADY_EXISTS` | no |
//! | `FailedPrecondition` | 412, 422 | `FAILED_PRECONDITION` | 412 | `FAILED_PRECONDITION` | no |
//! | `RateLimited` | 429 | `RESOURCE_EXHAUSTED` | 429 | `RESOURCE_EXHAUSTED` | yes (gRPC: with pushback) |
//! | `Cancelled` | 499 | `CANCELLED` | 499 | `CANCELLED` | no |
//! | `Internal` | 500, other 5xx | `INTERNAL`, `UNKNOWN`, `DATA_LOSS` | 500 | `INTERNAL` | no |
//! | `Unimplemented` | 501 | `UNIMPLEMENTED` | 501 | `UNIMPLEMENTED` | no |
//! | `Unavailable` | 502, 503 | `UNAVAILABLE` | 503 | `UNAVAILABLE` | yes |
//! | `DeadlineExceeded` | 504, 408 | `DEADLINE_EXCEEDED` | 504 | `DEADLINE_EXCEEDED` | yes |
//! | `Transport` | — (no response) | — | 502 | `UNAVAILABLE` | yes |
//! | `ClientError` | other 4xx | — | 400 | `INVALID_ARGUMENT` | no |
//!
//! A server answers with the status or code the error came from when it maps
//! to the same kind (a downstream `502` is answered `502`, a `410` `410`,
//! `ABORTED` `ABORTED`), except that a `408` is answered `504`; an error made
//! from a tower-mesh layer's error is answered as that error would be (a full
//! bulkhead: `503` / `RESOURCE_EXHAUSTED`; see [`crate::error`]).
//!
//! # Retryable kinds
//!
//! [`ServiceErrorKind::is_retryable`] is `true` for the kinds that describe a
//! transient state of the server or the network, and `false` for a verdict on
//! the request itself:
//!
//! - `Unavailable` — the only code gRPC's retry guidance (gRFC A6 service
//!   configs, the status-code docs: "retrying with a backoff") retries by
//!   default; also `502`/`503`, an open breaker, no endpoints.
//! - `DeadlineExceeded` — a new attempt (within the total deadline) may be
//!   faster; a *total* timeout is not retryable, no time is left.
//! - `RateLimited` — HTTP `429` is an explicit "later", honour
//!   [`retry_after`](ServiceError::retry_after). gRPC `RESOURCE_EXHAUSTED`
//!   also means "quota exhausted for the day" or "disk full", so it is
//!   retryable only when the server sent `grpc-retry-pushback-ms`.
//! - `Transport` — the connection failed; a refused connection never reached
//!   the server. A reset one may have been processed, so only idempotent
//!   requests should be retried: idempotency is the retry policy's concern,
//!   not this error's.
//! - `Internal` is **not** retryable: `500` / `INTERNAL` usually mean a bug the
//!   same request hits again, and gRPC and resilience4j retry only what is
//!   configured (`UNAVAILABLE` by default). Retrying it multiplies load on a
//!   failing service; a circuit breaker is the better answer.
//! - `Conflict` (`ABORTED`) calls for a retry of the whole read-modify-write
//!   cycle, not of the request; `Cancelled` means the caller gave up.
//!
//! A negative or malformed `grpc-retry-pushback-ms` makes any error not
//! retryable (gRFC A6: the server asks the client not to retry).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::service_error::{ServiceError, ServiceErrorKind, MapServiceErrorLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A downstream that is overloaded.
//! let client = ServiceBuilder::new()
//!     .layer(MapServiceErrorLayer::new().name("orders"))
//!     .service_fn(|_req: Request<String>| async {
//!         let res = Response::builder()
//!             .status(StatusCode::SERVICE_UNAVAILABLE)
//!             .header("retry-after", "3")
//!             .body(Full::new(Bytes::from_static(b"upstream overloaded\r\n")))
//!             .unwrap();
//!         Ok::<_, std::convert::Infallible>(res)
//!     });
//!
//! let err = client.oneshot(Request::new(String::new())).await.unwrap_err();
//! let err = ServiceError::from_error(err); // the BoxError holds a ServiceError
//! assert_eq!(err.kind(), ServiceErrorKind::Unavailable);
//! assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
//! assert!(err.is_retryable());
//! // For logs; the `\r` is replaced.
//! assert_eq!(err.body_excerpt(), Some("upstream overloaded\u{FFFD}\n"));
//!
//! // A gateway answers its own client with the same kind of failure.
//! let answer = err.to_http_response();
//! assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(answer.headers()["retry-after"], "3");
//! assert_eq!(answer.headers()["content-type"], "application/problem+json");
//! assert!(!answer.body().contains("overloaded"));
//! # }
//! ```
//!
//! [`MeshError`]: crate::error::MeshError
//! [`ServerErrorLayer`]: crate::error::ServerErrorLayer
//! [`BoxError`]: crate::BoxError

mod error;
mod future;
mod kind;
mod layer;
mod parse;

pub use error::ServiceError;
pub use future::ResponseFuture;
pub use kind::ServiceErrorKind;
pub use layer::{MapServiceError, MapServiceErrorLayer};
#[allow(deprecated)]
pub use layer::{ServiceErrorLayer, ServiceErrorService};
pub use parse::{EXCERPT_LIMIT, MAX_RETRY_AFTER};

#[cfg(test)]
mod tests;
