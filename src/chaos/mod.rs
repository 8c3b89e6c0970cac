//! Fault injection: delays, failures, aborted connections and black holes,
//! on purpose, to prove that the layers around them cope.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::chaos::{Abort, ChaosLayer, Delay};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! tokio::time::pause();
//! let chaos = ChaosLayer::builder()
//!     .seed(7) // the same decisions on every run
//!     .delay(Delay::Fixed(Duration::from_millis(300)), 0.5)
//!     .abort(Abort::Status(StatusCode::SERVICE_UNAVAILABLE), 0.3)
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(chaos)
//!     .service_fn(|_: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) });
//!
//! let mut unavailable = 0;
//! for _ in 0..100 {
//!     let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//!     if res.status() == StatusCode::SERVICE_UNAVAILABLE {
//!         unavailable += 1;
//!     }
//! }
//! assert!((15..=45).contains(&unavailable), "{unavailable}");
//! # }
//! ```
//!
//! In the shape of Envoy's fault filter and Polly's chaos strategies,
//! [`ChaosLayer`] wraps any `http::Request` → `http::Response` service (hyper,
//! axum, tonic) and, for each request:
//!
//! - with a probability, **delays** it before going on ([`Delay`]: fixed,
//!   uniform, or an exponential tail);
//! - with a probability, never answers it (a **black hole**: only the
//!   caller's timeout ends it), or else, with a probability, **aborts** it
//!   ([`Abort`]): an HTTP status, a gRPC trailers-only answer with a
//!   `grpc-status` code, or an [`InjectedFault`] error such as an aborted
//!   connection (`ConnectionReset`). A made-up answer carries the
//!   [`FaultInjected`] response extension; the service is not called;
//! - only for requests that [match](ChaosLayerBuilder::only) (method, path
//!   prefix, headers), if given.
//!
//! Nothing is injected unless switched on in code (each builder method) or
//! in configuration ([`ChaosConfig`], `enabled = true`).
//!
//! # Faults asked for by the caller
//!
//! With [`header_faults`](ChaosLayerBuilder::header_faults), a request can
//! ask for its own faults: `x-mesh-fault-delay: 250` (milliseconds, at most
//! [`max_header_delay`](ChaosLayerBuilder::max_header_delay)),
//! `x-mesh-fault-abort: 503` (or `grpc:14`, `reset`, `black-hole`). They
//! replace the probabilistic faults for that request and are honoured only
//! from the [`AllowedCallers`]; from anyone else, and when malformed, they
//! are ignored. [`ChaosConfig::layer`] refuses them in the `production`
//! preset.
//!
//! # Determinism
//!
//! With a [`seed`](ChaosLayerBuilder::seed), the n-th decision of a layer is
//! the same on every run (decisions are drawn from a counter, so calls made
//! one after the other get the same faults; concurrent calls share out the
//! same sequence in the order they arrive).
//!
//! # Metrics
//!
//! `tower_mesh_chaos_injected_total{service, fault}` counts injected faults
//! (`fault` is `delay`, `abort_http`, `abort_grpc`, `abort_io` or
//! `black_hole`); each also emits a `debug` tracing event.

mod config;
mod error;
mod fault;
mod future;
mod layer;
mod service;

#[cfg(test)]
mod tests;

pub use config::{AbortConfig, ChaosConfig, DelayConfig, HeaderFaultsConfig, MatchConfig};
pub use error::{ChaosConfigError, InjectedFault};
pub use fault::{Abort, AllowedCallers, CallerCheck, Delay, RequestMatch, ABORT_HEADER, DELAY_HEADER};
pub use future::{FaultInjected, ResponseFuture};
pub use layer::{ChaosLayer, ChaosLayerBuilder};
pub use service::Chaos;
