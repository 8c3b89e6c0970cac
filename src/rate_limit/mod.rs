//! Rate limiting: GCRA with a rate and a burst, in process, per key, or
//! shared by every instance of a service through Redis.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::rate_limit::{RateLimitLayer, RateLimited};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! tokio::time::pause();
//! // 100 calls per second, at most 3 at once.
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new("100/s".parse().unwrap(), 3))
//!     .service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("done") });
//!
//! for _ in 0..3 {
//!     assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "done");
//! }
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let err = err.downcast_ref::<RateLimited>().unwrap();
//! assert_eq!(err.retry_after(), Duration::from_millis(10));
//!
//! tokio::time::advance(Duration::from_millis(10)).await;
//! assert!(svc.ready().await.unwrap().call(()).await.is_ok());
//! # }
//! ```
//!
//! The equivalent of resilience4j's `RateLimiter`, Polly's rate limiter,
//! tower's `RateLimit`, governor / tower-governor and Envoy's local (and,
//! with [`RedisRateLimiter`](self::redis::RedisRateLimiter), global) rate
//! limit:
//!
//! - [`RateLimitLayer`] admits `rate` calls per period with bursts of up to
//!   `burst` after an idle spell: the generic cell rate algorithm, from the
//!   [`governor`](https://docs.rs/governor) crate, run on tokio's clock (so
//!   paused-time tests move it). Over a span `d` starting from rest it
//!   admits at most `burst + rate × d` calls.
//! - The permit is taken in `call`. A call over the limit waits up to
//!   `max_wait` for its permit (zero by default — servers shed at once; an
//!   outbound throttle sets it), never past an enclosing
//!   [`Deadline`](crate::deadline::Deadline); else it fails with
//!   [`RateLimited`], which says how long until a permit
//!   ([`retry_after`](RateLimited::retry_after)). Waiting holds no permit, so
//!   dropping the future cancels cleanly.
//! - [`RateLimitBuilder::key`] gives each key its own limit
//!   ([`KeyedRateLimitLayer`]), with a tier table of per-key policies and a
//!   bound on the keys tracked ([`Overflow`]). In configuration, [`KeySpec`]
//!   names the key of an HTTP request: `header:x-api-key`, `claim:sub` (a
//!   claim of the JWT that the `jwt` feature's layer validated; that layer
//!   goes outside the rate limit), `authority`, `peer-ip` (a `SocketAddr`
//!   extension, or axum's `ConnectInfo<SocketAddr>` through [`PeerAddr`]).
//! - With feature `rate-limit-redis`, [`redis::RedisRateLimiter`] makes
//!   one limit shared by every instance.
//!
//! Servers answer [`RateLimited`] with `429 Too Many Requests`,
//! `Retry-After`, and the `RateLimit-Policy` / `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers (`"name";q=100;w=1`,
//! `"name";r=0;t=1`); gRPC requests with `RESOURCE_EXHAUSTED` and
//! `grpc-retry-pushback-ms` (see [`ServerErrorLayer`](crate::error::ServerErrorLayer)).
//! Clients' classifiers ([`IgnoreRejections`](crate::classify::IgnoreRejections))
//! count it as a rejection, not as a failure of the dependency: it does not
//! trip a breaker nor get retried at once.
//!
//! # Metrics
//!
//! Labelled `service` = the limiter's name (default `"rate_limit"`), never
//! with a key: `tower_mesh_rate_limit_decisions_total` (counter, `decision` =
//! `admitted` / `rejected`), `tower_mesh_rate_limit_wait_seconds` (histogram
//! of the waits of calls admitted after waiting),
//! `tower_mesh_rate_limit_evicted_keys_total` (keyed). A rejection also emits
//! a `debug` tracing event.
//!
//! # Why governor
//!
//! governor's GCRA keeps one `AtomicU64` per limit and decides with one
//! compare-and-swap, without allocating; this crate only gives it tokio's
//! clock (so tests with paused time and `max_wait` agree with it).

mod config;
mod configured;
mod error;
mod future;
pub mod headers;
mod key;
mod keyed;
mod layer;
mod limiter;
mod rate;
mod service;

#[cfg(feature = "rate-limit-redis")]
pub mod redis;

pub use config::{Overflow, RateLimitConfig, StoreErrorPolicy};
pub use configured::ConfiguredLimiter;
pub use error::{RateLimited, Reason};
pub use future::ResponseFuture;
pub use key::{KeySpec, KeySpecError, PeerAddr};
pub use keyed::{KeyedLimiter, KeyedRateLimitBuilder};
pub use layer::{KeyedRateLimitLayer, RateLimitBuilder, RateLimitLayer};
pub use limiter::{Acquire, Decide, Limiter, LocalLimiter};
pub use rate::{Policy, Rate, RateParseError};
pub use service::RateLimit;

#[cfg(test)]
mod tests;
