//! Correlation ids and W3C Trace Context, carried from an incoming request
//! onto every call made while handling it.
//!
//! tower-http's `SetRequestId` / `PropagateRequestId` stop at one hop and
//! trust what they are given. This module closes the loop, safely:
//!
//! - [`CorrelationIdLayer`] (server side: axum, hyper) takes the incoming id
//!   from `x-correlation-id` (or `x-request-id`) if it is valid — at most 128
//!   bytes of visible ASCII, none of the separators you
//!   [forbid](CorrelationIdLayer::forbid) — or makes a fresh UUID v7;
//!   parses `traceparent` / `tracestate` or starts a new trace; puts the
//!   resulting [`RequestContext`] in the request's extensions and makes it
//!   [current](RequestContext::current) on the task while the handler runs;
//!   records it on the current `tracing` span; and echoes the id on the
//!   response. Invalid incoming values are replaced, never echoed, logged or
//!   passed on.
//! - [`CorrelationIdClientLayer`] (client side: a hyper-util `Client`, a
//!   tonic `Channel`, any `Service<http::Request<B>>`) puts the current
//!   context on outgoing requests: the same correlation id, the same trace id
//!   with a new parent id, and the `tracestate`.
//! - [`RequestContext`], [`CorrelationId`], [`TraceParent`] and
//!   [`TraceState`] are usable without HTTP, e.g. to copy the ids into
//!   message headers ([`RequestContext::current`],
//!   [`RequestContext::outbound`], [`RequestContext::scope`]).
//!
//! The context follows the task that handles the request, as a tokio
//! task-local would (it is a thread-local set around every poll of the
//! handler's future, which is cheaper). A task spawned by the handler does
//! not inherit it; wrap its future in [`RequestContext::scope`].
//!
//! # Example
//!
//! A server whose handler calls a downstream service through a client stack
//! (in a real program the client's inner service is a hyper-util `Client` or
//! a tonic `Channel`, and the server is axum or hyper):
//!
//! ```
//! use http::{Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_mesh::correlation::{CorrelationIdClientLayer, CorrelationIdLayer, RequestContext, TraceParent};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // What the downstream service receives.
//! let downstream = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
//! });
//! let client = ServiceBuilder::new().layer(CorrelationIdClientLayer::new()).service(downstream);
//!
//! let server = ServiceBuilder::new().layer(CorrelationIdLayer::new().forbid(",;")).service_fn(
//!     move |req: Request<()>| {
//!         let client = client.clone();
//!         async move {
//!             // The handler sees the context in the extensions and as current.
//!             let ctx = req.extensions().get::<RequestContext>().cloned().unwrap();
//!             assert_eq!(RequestContext::current().as_ref(), Some(&ctx));
//!             let seen = client.oneshot(Request::new(())).await?.into_body();
//!             Ok::<_, std::convert::Infallible>(Response::new(seen))
//!         }
//!     },
//! );
//!
//! let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let req = Request::builder()
//!     .header("x-correlation-id", "order-42")
//!     .header("traceparent", incoming)
//!     .body(())
//!     .unwrap();
//! let res = server.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-correlation-id"], "order-42"); // echoed
//! let downstream_saw = res.into_body();
//! assert_eq!(downstream_saw["x-correlation-id"], "order-42");
//! let sent = TraceParent::parse(downstream_saw["traceparent"].to_str().unwrap()).unwrap();
//! let received = TraceParent::parse(incoming).unwrap();
//! assert_eq!(sent.trace_id(), received.trace_id()); // same trace
//! assert_ne!(sent.parent_id(), received.parent_id()); // a new hop
//!
//! // An id with CR/LF (or too long, or not ASCII) is replaced, never echoed.
//! let req = Request::builder().header("x-correlation-id", "a,b").body(()).unwrap();
//! let res = server.oneshot(req).await.unwrap();
//! assert_ne!(res.headers()["x-correlation-id"], "a,b");
//! # }
//! ```
//!
//! # Metrics
//!
//! With `service` the layer's [name](CorrelationIdLayer::name) (default
//! `"correlation"`):
//!
//! - `tower_mesh_correlation_ids_total{service, outcome}`: incoming requests
//!   by where their id came from — `accepted` (a valid id came in),
//!   `generated` (none came in), `rejected` (an invalid one came in and was
//!   replaced);
//! - `tower_mesh_correlation_traces_total{service, outcome}`: the same for
//!   `traceparent`;
//! - `tower_mesh_correlation_tracestate_rejected_total{service}`: invalid
//!   `tracestate` values dropped;
//! - `tower_mesh_correlation_outbound_total{service, outcome}`: outgoing
//!   requests by `propagated` (the current context's id, or a valid one the
//!   caller set) or `generated` (made outside a request's scope).
//!
//! Each rejected value is also a `debug` event, with the reason but never the
//! value.

mod client;
mod context;
mod error;
mod future;
mod id;
mod layer;
mod service;
mod trace;

pub use client::{CorrelationIdClient, CorrelationIdClientLayer};
pub use context::{ContextScope, RequestContext, TRACEPARENT, TRACESTATE, X_CORRELATION_ID, X_REQUEST_ID};
pub use error::{ContextError, InvalidCorrelationId, InvalidTraceParent, InvalidTraceState};
pub use future::ResponseFuture;
pub use id::{CorrelationId, MakeCorrelationId, UuidV7};
pub use layer::CorrelationIdLayer;
pub use service::CorrelationIdService;
pub use trace::{SpanId, TraceId, TraceParent, TraceState};

#[cfg(test)]
mod tests;
