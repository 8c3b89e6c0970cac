//! Retry failed calls with exponential backoff, jitter and a retry budget.
//!
//! [`RetryLayer`] sends a call again when the shared [classifier](crate::classify)
//! says it failed, up to `max_retries` times **after the first attempt** (three
//! attempts in all is `max_retries(2)`).
//!
//! Only [`Outcome::Failure`](crate::classify::Outcome::Failure) is retried
//! (and only when the builder's `retry_if` predicate, if any, accepts its
//! [`FailureKind`](crate::classify::FailureKind), and the request policy says
//! the request may be repeated after that failure); `Success`, `Ignored`,
//! `Cancelled` and `Deferred` (an outcome known only at the end of a gRPC
//! stream, too late to retry) are returned as they are. Errors of the inner
//! service pass through unchanged, as with tower's `Retry`; after the last
//! retry the last result (response or error) is returned.
//!
//! * **Backoff** — [`Backoff`]: `initial × multiplier^n` capped at `max_delay`,
//!   randomised by a [`Jitter`] mode (none, full, equal, decorrelated);
//!   [`Backoff::none`] retries at once. The jitter can be
//!   [seeded](Backoff::seed) (the same delays every run, for tests) or its
//!   random numbers given by the caller ([`Backoff::delay_with`]).
//! * **Budget** — [`RetryBudget`], shared by every clone: retries may be at most
//!   a ratio of recent requests plus a minimum per second, so a struggling
//!   dependency is not hit by a retry storm. A call cancelled during its backoff
//!   gives its retry back.
//! * **Server pushback** — with [`HttpRequests`] or [`GrpcRequests`],
//!   `Retry-After` (seconds or HTTP-date) and `grpc-retry-pushback-ms`
//!   replace the backoff delay and are waited out in full, even when longer
//!   than `max_delay`: a retry never comes sooner than the server asked. A
//!   server asking for longer than `max_pushback` (default 5 minutes), or a
//!   negative or malformed gRPC pushback, gets no retry.
//! * **Deadlines** — a retry that would start after the deadline of an
//!   enclosing [`TimeoutLayer`](crate::timeout::TimeoutLayer) is not made; the
//!   last result (the server's answer, e.g. a `503` whose `Retry-After` ends
//!   past the deadline) is returned at once instead of sleeping past it.
//! * **Safe replay** — requests are copied before they are sent. Any `Clone`
//!   request works ([`CloneRequests`], the default). `http::Request`s go through
//!   [`HttpRequests`]: only idempotent methods, and only bodies held in memory up
//!   to a size limit ([`ReplayBody`]); anything else is sent once, never
//!   partially replayed.
//! * **Safe repeats for gRPC** — [`GrpcRequests`] follows gRPC's retry design
//!   (gRFC A6): a call is retried only when the server did not process it
//!   (`UNAVAILABLE`, `RESOURCE_EXHAUSTED` with pushback, a connection
//!   refused), never after `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`,
//!   another transport error or a per-attempt timeout — unless its method is marked
//!   [idempotent](GrpcRequests::idempotent) by its full path.
//! * **Rejected retries** — when the stack's own protection (an open circuit
//!   breaker, a full bulkhead) turns a retry away, the caller gets a
//!   [`RetryRejected`] (for [`BoxError`](crate::BoxError) services): the
//!   rejection is its source, and the call's last real failure is kept in it.
//!
//! | tower-mesh | resilience4j | Polly | tower |
//! |---|---|---|---|
//! | `max_retries` | `maxAttempts − 1` | `MaxRetryAttempts` | `Policy::retry` |
//! | `Backoff` + `Jitter` | `IntervalFunction.ofExponentialRandomBackoff` | `BackoffType.Exponential`, `UseJitter` | `backoff::ExponentialBackoff` |
//! | `RetryBudget` | — | — | `budget::TpsBudget` |
//! | classifier, `retry_if` | `retryOnResult`, `retryExceptions` | `ShouldHandle` | `Policy::retry` |
//!
//! ```
//! use std::time::Duration;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::retry::{Backoff, Jitter, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let c = calls.clone();
//! let flaky = tower::service_fn(move |x: u32| {
//!     let n = c.fetch_add(1, Ordering::SeqCst);
//!     async move { if n < 2 { Err("temporarily unavailable") } else { Ok(x * 2) } }
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::builder()
//!             .max_retries(3)
//!             .backoff(Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(1)).jitter(Jitter::Equal))
//!             .build()
//!             .unwrap(),
//!     )
//!     .service(flaky);
//! assert_eq!(svc.oneshot(21).await, Ok(42));
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```

mod backoff;
mod budget;
mod config;
mod error;
mod future;
mod grpc;
mod layer;
mod request;
mod service;
pub(crate) mod template;

pub use self::backoff::{Backoff, Jitter};
pub use self::budget::{BudgetToken, RetryBudget};
pub use self::config::{BackoffConfig, BudgetConfig, RetryConfig};
pub use self::error::RetryRejected;
pub use self::future::ResponseFuture;
pub use self::grpc::GrpcRequests;
pub use self::layer::{RetryBuilder, RetryLayer};
pub use self::request::{
    AttemptFailure, CloneRequests, HttpRequests, InvalidIdempotent, Pushback, ReplayBody, RetryRequests,
};
pub use self::service::Retry;

#[cfg(test)]
mod tests;
