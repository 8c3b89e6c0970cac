//! Hedged requests: when a call has not answered after a delay, send a copy
//! and take the first good answer ("The Tail at Scale", Dean & Barroso).
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::hedge::{HedgeDelay, HedgeLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let c = calls.clone();
//! // The first call is stuck behind a slow replica; a copy answers at once.
//! let backend = tower::service_fn(move |x: u32| {
//!     let slow = c.fetch_add(1, Ordering::SeqCst) == 0;
//!     async move {
//!         if slow {
//!             tokio::time::sleep(Duration::from_secs(2)).await;
//!         }
//!         Ok::<_, std::convert::Infallible>(x * 2)
//!     }
//! });
//! let hedge = HedgeLayer::builder()
//!     .delay(HedgeDelay::Fixed(Duration::from_millis(10)))
//!     .max_hedges(1)
//!     .no_budget()
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(hedge).service(backend);
//!
//! let start = tokio::time::Instant::now();
//! assert_eq!(svc.oneshot(21).await, Ok(42));
//! assert_eq!(start.elapsed(), Duration::from_millis(10)); // not 2 s
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```
//!
//! * **Delay** — [`HedgeDelay::Fixed`], or [`HedgeDelay::Percentile`]: a
//!   percentile (e.g. p95) of the latencies of the good answers of the
//!   previous window (rotated like tower's `hedge`; recorded without a lock
//!   into log-linear buckets of microseconds, within 1.6 %), used once that
//!   window held `min_samples` answers; until then no call is hedged. Up to
//!   `max_hedges` copies are sent, one per delay.
//! * **Safe requests only** — the retry layer's request policies decide
//!   which requests may be in flight twice and copy them:
//!   [`CloneRequests`](crate::retry::CloneRequests) (any `Clone` request),
//!   [`HttpRequests`](crate::retry::HttpRequests) (idempotent methods, bodies
//!   in memory), [`GrpcRequests`](crate::retry::GrpcRequests) (only methods
//!   marked idempotent, see [`RetryRequests::may_hedge`](crate::retry::RetryRequests::may_hedge)).
//! * **First good answer wins** — an answer the [classifier](crate::classify)
//!   calls a failure does not win: the other copies are waited for, and the
//!   last failure is returned when all failed. The losers are dropped as soon
//!   as one wins; a circuit breaker below records a dropped call as
//!   `Cancelled`, which it ignores by default
//!   ([`CancelPolicy::Ignore`](crate::classify::CancelPolicy)), and a bulkhead
//!   below gets its permit back.
//! * **Budget** — hedges are taken from a
//!   [`RetryBudget`](crate::retry::RetryBudget) (default: at most 5 % of the
//!   requests of the last 10 s), which may be shared with the retry layer.
//! * **Deadlines** — no hedge is sent when the deadline of an enclosing
//!   [`TimeoutLayer`](crate::timeout::TimeoutLayer) leaves less than the
//!   hedge delay (the time a healthy call takes) to answer.
//! * **Place in a stack** — below the retry and total timeout layers, above
//!   the circuit breaker, bulkhead and per-attempt timeout: every hedge is an
//!   attempt that goes through them.
//!
//! [`HedgeConfig`] is the layer as configuration (`delay = "p95"`, `max`,
//! `budget`, `min_samples`, `window`), as the configured client stack reads it.
//!
//! Metrics (label `service`): `tower_mesh_hedge_sent_total`,
//! `tower_mesh_hedge_won_total`, `tower_mesh_hedge_budget_exhausted_total`.
//! Tracing (`debug`): a hedge sent, a hedge that won, a hedge not sent (budget,
//! deadline), the percentile delay changed.
//!
//! | tower-mesh | tower | Polly | gRPC (A6) |
//! |---|---|---|---|
//! | `HedgeDelay::Percentile` (`percentile: 95.0`) | `Hedge::new(.., min_data_points, latency_percentile, period)` (a quantile despite its name: `0.95`) | `DelayGenerator` | — |
//! | `HedgeDelay::Fixed` | — | `Delay` | `hedgingDelay` |
//! | `max_hedges` | 1 | `MaxHedgedAttempts` | `maxAttempts − 1` |
//! | budget | — | — | retry throttling |

mod config;
mod delay;
mod future;
mod latencies;
mod layer;
mod service;

pub use self::config::{DelaySpec, HedgeConfig};
pub use self::delay::HedgeDelay;
pub use self::future::ResponseFuture;
pub use self::layer::{HedgeBuilder, HedgeLayer};
pub use self::service::Hedge;

#[cfg(all(test, not(loom)))]
mod tests;
