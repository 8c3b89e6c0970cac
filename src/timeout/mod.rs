//! Timeouts: fail calls that take too long, with a total deadline that every
//! layer below respects.
//!
//! The equivalent of tower's `Timeout` and resilience4j's `TimeLimiter`, made
//! retry-aware the way gRPC deadlines are:
//!
//! - [`TimeoutLayer::new(total)`](TimeoutLayer::new), **above** a retry layer,
//!   bounds the whole call. On `call` it computes the call's
//!   [`Deadline`](crate::deadline::Deadline) — now + `total`, or an earlier
//!   deadline already current on the task or carried by the request — and
//!   1. attaches it to the request with
//!      [`DeadlineCarrier::set_deadline`](crate::deadline::DeadlineCarrier::set_deadline)
//!      (an `http::Request` gets it as an extension; with
//!      [`grpc_timeout(true)`](TimeoutLayer::grpc_timeout) also as a
//!      `grpc-timeout` header, so the server can give up too);
//!   2. calls the inner service, and polls its future, with the deadline
//!      current ([`Deadline::current`](crate::deadline::Deadline::current)),
//!      so a retry layer below never waits past it;
//!   3. fails with [`Elapsed`] (kind [`TimeoutKind::Total`]) if the deadline
//!      passes first.
//! - [`TimeoutLayer::per_attempt(d)`](TimeoutLayer::per_attempt), **below** a
//!   retry layer, bounds each attempt: its effective timeout is
//!   `min(d, time left before the enclosing deadline)`, so an attempt never
//!   outlives the total. It installs that (earlier) deadline the same way for
//!   the layers below it and the request. When the enclosing deadline is what
//!   cuts the attempt short, the error says [`TimeoutKind::Total`] — there is
//!   no time left for another attempt — otherwise [`TimeoutKind::Attempt`].
//!
//! The request type must implement
//! [`DeadlineCarrier`](crate::deadline::DeadlineCarrier): `http::Request`
//! does (the deadline goes in its extensions, so it survives a hop to
//! another task, such as a `tower::buffer::Buffer`'s worker), plain types
//! such as `()`, `u32` or `String` have no-op impls, and any other type opts
//! in with an empty `impl DeadlineCarrier for MyRequest {}` (the deadline
//! then travels only as the task's current deadline, which stays behind on
//! a task hop).
//!
//! Each timeout arms its own timer when its call waits (none for a call
//! whose response is ready at the first poll), so a per-attempt timeout
//! below a total one waits with two timers; the timer is part of the
//! response future, and no call allocates.
//!
//! As in tower, `poll_ready` is not timed (put a timeout above a `Buffer` or
//! use a bulkhead with a maximum wait to bound waiting for capacity), and the
//! inner future is polled before the timer, so a response ready at the same
//! instant as the deadline wins.
//!
//! # Response bodies
//!
//! A [`TimeoutLayer`] times the call up to the response **head**: once the
//! head has arrived in time, the body is not timed, so a stream may run as
//! long as the server sends it. [`TimeoutLayer::cover_body`] makes a layer
//! ([`BodyTimeoutLayer`], for `http::Response` services) whose deadline also
//! covers the body: the response's body is a [`TimeoutBody`] that yields an
//! [`Elapsed`] error (same kind and timeout as for the head) if the deadline
//! passes while it waits for its next frame, and then ends. The deadline is
//! the layer's own — the per-attempt one below a retry layer (which already
//! ends by the total deadline), the total one above it — so a total timeout
//! covering the body bounds the whole exchange, retries and body included.
//!
//! A [`TimeoutBody`] reports how the body ended (trailers, error, timeout)
//! to the response's [`EosSlot`](crate::classify::EosSlot), putting one in
//! the extensions if there is none: a circuit breaker **above** it whose
//! classifier watches bodies ([`HttpClassifier`](crate::classify::HttpClassifier),
//! [`GrpcClassifier`](crate::classify::GrpcClassifier)) then records the call
//! at the end of the body, and a body that times out as a failure
//! ([`FailureKind::Timeout`](crate::classify::FailureKind::Timeout)). For a
//! breaker to see a timeout of a body timed *above* it (a total timeout
//! above the retry layer), put a [`ClassifyEosLayer`](crate::classify::ClassifyEosLayer)
//! below the breaker: the body timeout reports through the slot it made.
//! The configured stack (feature `stack`) times response heads only.
//!
//! Servers answer [`Elapsed`] with `504` / gRPC `DEADLINE_EXCEEDED` (see
//! [`ServerErrorLayer`](crate::error::ServerErrorLayer)).
//!
//! # Metrics
//!
//! `tower_mesh_timeout_elapsed_total{service, kind}` counts timeouts (`kind`
//! is `attempt` or `total`; `service` is the layer's [name](TimeoutLayer::name),
//! default `"timeout"`). Each timeout also emits a `debug` tracing event.
//!
//! # Example
//!
//! A client stack with a total and a per-attempt timeout (a retry layer would
//! go between the two):
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::deadline::Deadline;
//! use tower_mesh::timeout::TimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)).grpc_timeout(true))
//!     // .layer(retry)
//!     .layer(TimeoutLayer::per_attempt(Duration::from_millis(500)).grpc_timeout(true))
//!     .service_fn(|req: http::Request<()>| async move {
//!         // The deadline travels with the request and the task.
//!         assert!(req.extensions().get::<Deadline>().is_some());
//!         assert!(Deadline::current().unwrap().remaining() <= Duration::from_millis(500));
//!         assert_eq!(req.headers()["grpc-timeout"], "500000u");
//!         Ok::<_, std::convert::Infallible>("ok")
//!     });
//! assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap(), "ok");
//! # }
//! ```

mod body;
mod config;
mod error;
mod future;
mod layer;
mod service;

pub use body::{BodyTimeout, BodyTimeoutFuture, BodyTimeoutLayer, TimeoutBody};
pub use config::{TimeoutConfig, TimeoutLayers};
pub use error::{Elapsed, TimeoutKind};
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use service::Timeout;

#[cfg(test)]
mod tests;
