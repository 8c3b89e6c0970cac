//! Adaptive concurrency limit: a bulkhead whose size finds itself, from the
//! latency and failures of the calls — Netflix's
//! [concurrency-limits](https://github.com/Netflix/concurrency-limits) and
//! Envoy's adaptive concurrency filter, as a tower layer.
//!
//! [`AdaptiveConcurrencyLayer`] lets at most `limit` calls run at once; a
//! call beyond it is rejected at once (or after an optional short wait) with
//! [`ConcurrencyLimited`], which servers answer with `503` / gRPC
//! `RESOURCE_EXHAUSTED`, like a full [bulkhead](crate::bulkhead) (see
//! [`ServerErrorLayer`](crate::error::ServerErrorLayer)). Each completed call
//! gives the algorithm a *sample*: its round-trip time (from `call` to the
//! response), the calls in flight when it started, and whether it was a
//! *drop* — a failure as the classifier sees it (the same [`Classify`]
//! implementations the [circuit breaker](crate::circuit_breaker) takes;
//! rejections by the stack's own layers below are not drops).
//!
//! Usable on clients (one limit per dependency) and on servers, where it
//! sheds load: put it inside the axum / tonic server stack, below the
//! [`ServerErrorLayer`](crate::error::ServerErrorLayer).
//!
//! # Algorithms
//!
//! With `L` the limit, `rtt` a sample's latency and `inflight` the calls in
//! flight when it started; every new limit is clamped to
//! `[min_limit, max_limit]` and the limit used is its integer part.
//!
//! **[`Gradient2`]** (the default; Netflix's `Gradient2Limit`):
//!
//! Samples are gathered into windows of `window` (100 ms) and at least
//! `min_window_samples` (10) samples, as Netflix's `WindowedLimit` and
//! Envoy's controller do; each window is one update, with `rtt` its mean
//! RTT and `inflight` its largest number in flight:
//!
//! ```text
//! long  = EMA of rtt over `long_window` windows (a plain mean for the first 10)
//! if long / rtt > 2:  long = long * 0.95          (recover fast after an overload)
//! if inflight < L / 2: keep L                      (app-limited: no evidence)
//! gradient = clamp(tolerance * long / rtt, 0.5, 1.0)
//! L' = L * gradient + queue_size
//! L  = L * (1 - smoothing) + L' * smoothing
//! ```
//!
//! While the latency stays within `tolerance` times its long-term average,
//! the limit grows by `queue_size × smoothing` per window; when queueing
//! makes the calls slower it comes down. The limit settles where the
//! latency is about `tolerance` times the long-term RTT. That average
//! follows a lasting change of latency (over `long_window` windows, a
//! minute by default), so a lasting overload slowly raises the limit again:
//! Gradient2 reacts to *changes* in latency. A drop's latency is not a
//! sample (a fast error would look like spare capacity). Without windows
//! (Netflix's plain `Gradient2Limit`, one update per call) the limit grows
//! by `0.8` per call and overshoots by far at high call rates.
//!
//! **[`Aimd`]** (TCP's congestion avoidance, Netflix's `AIMDLimit`):
//!
//! ```text
//! drop, or rtt > timeout:    L = L * backoff_ratio   (once per window, see below)
//! else if inflight * 2 >= L: L = L + increase / L    (+increase per window of L calls)
//! ```
//!
//! Unlike Netflix's `AIMDLimit` (`+increase` per call, a decrease per
//! drop), the limit moves as TCP's window does: it grows by `increase` per
//! window of `L` successful calls, and a drop decreases it only if its call
//! started after the last decrease — the calls admitted before a decrease
//! report the overload it already answered. Per-call steps overshoot
//! (the limit doubles every round trip) and then collapse to `min_limit`
//! under one burst of slow calls.
//!
//! References: Netflix Tech Blog, "Performance Under Load" (2018);
//! `Gradient2Limit.java` and `AIMDLimit.java` in Netflix/concurrency-limits;
//! Envoy's `envoy.filters.http.adaptive_concurrency` (gradient controller);
//! Jacobson, "Congestion Avoidance and Control" (SIGCOMM 1988) for AIMD.
//!
//! # Slots, cancellation, waiting
//!
//! As in the [bulkhead](crate::bulkhead), the slot is taken in `poll_ready`
//! and moves into the response future on `call`; `poll_ready` returns
//! `Ready(Ok(()))` even when there is none (the call then fails with
//! [`ConcurrencyLimited`]), so a `Buffer` or `Balance` above keeps working.
//!
//! The slot is given back when the call completes, or when its future (or
//! the service holding an unused slot) is dropped. **A cancelled call feeds
//! no sample**: the caller gave up, which says nothing about the
//! dependency's latency; an [`Outcome::Ignored`](crate::classify::Outcome)
//! result feeds none either. A result the classifier defers (gRPC trailers)
//! counts as a success: the latency is that of the response head.
//!
//! With a `max_wait`, a call that finds no slot waits up to that long for
//! one; at most `limit` calls wait at once, the others are rejected at once.
//!
//! The happy path allocates nothing: a slot is one lock of a `std` mutex
//! (also taken once per completion, to update the limit; never held across
//! an `.await`).
//!
//! # Metrics
//!
//! Labelled `service` = the layer's name (default `"adaptive_concurrency"`):
//! `tower_mesh_adaptive_concurrency_limit`, `…_in_flight`,
//! `…_rtt_short_seconds` (the latest sample), `…_rtt_long_seconds`
//! (Gradient2's long-term estimate) — gauges — and
//! `tower_mesh_adaptive_concurrency_rejections_total` (counter). A `debug`
//! tracing event when the limit has moved by 10 % (by 1 below 10) since the
//! last event, and one per rejection.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::adaptive_concurrency::{AdaptiveConcurrencyLayer, Aimd, ConcurrencyLimited};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = AdaptiveConcurrencyLayer::builder()
//!     .name("orders")
//!     .aimd(Aimd { timeout: Duration::from_millis(100), ..Aimd::default() })
//!     .initial_limit(1)
//!     .min_limit(1)
//!     .max_limit(100)
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     Ok::<_, std::convert::Infallible>("done")
//! });
//!
//! let first = svc.ready().await.unwrap().call(()); // takes the only slot
//! let second = svc.ready().await.unwrap().call(()); // rejected at once
//! assert!(second.await.unwrap_err().is::<ConcurrencyLimited>());
//! assert_eq!(first.await.unwrap(), "done");
//! // A fast success with the limit in use: AIMD adds 1 / limit.
//! assert_eq!(handle.limit(), 2);
//! assert_eq!(handle.in_flight(), 0);
//! # }
//! ```
//!
//! [`Classify`]: crate::classify::Classify

mod algorithm;
mod config;
mod error;
mod future;
mod layer;
mod limiter;
mod service;

pub use algorithm::{Aimd, Gradient2};
pub use config::{AdaptiveConcurrencyConfig, AlgorithmKind};
pub use error::ConcurrencyLimited;
pub use future::ResponseFuture;
pub use layer::{AdaptiveConcurrencyBuilder, AdaptiveConcurrencyLayer, LimitHandle};
pub use service::AdaptiveConcurrency;

#[cfg(test)]
mod tests;
