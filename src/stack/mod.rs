//! One stack from configuration: presets, the recommended layer order,
//! per-call metrics.
//!
//! A [`MeshConfig`] (TOML file, environment variables, or code) describes
//! the client stack of each downstream service and the server-side layers;
//! [`ClientConfig::http_stack`] / [`ClientConfig::grpc_stack`] build a
//! [`ClientStack`] that wraps a hyper-util client or a tonic `Channel`, and
//! [`ServerConfig::stack`] a [`ServerStack`] for an axum router. Presets
//! (`development`, `testing`, `production`, see [`Preset`]) give every
//! value a default, so a file says only what differs.
//!
//! # The recommended order
//!
//! ```text
//!   request ─▶ Observe          metrics + log of the whole call, retries included
//!            ─▶ CorrelationId    one id and trace for every attempt
//!            ─▶ Jwt (forward)    token added once, to allowed authorities only
//!            ─▶ Fallback         answers a failed or rejected call (feature fallback, buffered stack)
//!            ─▶ Coalesce         identical GETs in flight share one call (feature coalesce, buffered stack)
//!            ─▶ Timeout (total)  bounds the call, backoff included; deadline in extensions
//!            ─▶ Retry            sees every failure below; never sleeps past the deadline
//!            ─▶ Hedge            a copy of a slow safe request; each copy is an attempt (feature hedge)
//!            ─▶ RateLimit        a permit per attempt, waiting up to max_wait (feature rate-limit)
//!            ─▶ CircuitBreaker   one outcome per attempt; open = fast rejection
//!            ─▶ Bulkhead         a permit per attempt in flight
//!            ─▶ Timeout (attempt) one attempt's time, not counting the wait for a permit
//!            ─▶ Discovery        each attempt may pick another endpoint; outliers ejected
//!            ─▶ client (hyper-util / tonic Channel)
//! ```
//!
//! Why this order (it is resilience4j's `Retry(CircuitBreaker(…(Bulkhead)))`
//! with Rust's timeouts made explicit):
//!
//! - **Retry above the breaker**: every attempt is an outcome for the
//!   breaker, and once it opens the retry gets a fast [`CircuitOpen`]
//!   instead of waiting on a dead dependency (the caller then gets a
//!   [`RetryRejected`] that keeps the call's last real failure); the retry
//!   budget caps the extra load a flapping dependency receives.
//! - **The total timeout above the retry** bounds the whole call including
//!   backoff sleeps; the retry reads the deadline and does not start a retry
//!   that cannot finish.
//! - **The fallback outermost of the resilience layers**: it sees every
//!   outcome below — a total timeout, a [`RetryRejected`] keeping the last
//!   failure, an open circuit, a full bulkhead — and answers each the same
//!   way (the last good answer, then a fixed one), marked as a fallback.
//! - **Coalescing above the total timeout and the retry**: identical
//!   requests in flight share one whole call, retries included, so a
//!   hundred waiting callers cost the dependency one call (and one retry
//!   budget deposit, one breaker outcome per attempt), not a hundred; the
//!   shared call runs under the deadline of the caller that started it,
//!   and a waiter that takes it over under its own.
//! - **The hedge below the retry and the total timeout, above the rate
//!   limit, breaker, bulkhead and attempt timeout**: a hedge is one more
//!   attempt, so it takes a rate-limit and bulkhead permit, is an outcome
//!   for the breaker (a dropped loser counts as cancelled, ignored), and
//!   has its own attempt timeout; the retry sees one answer — the first
//!   good one — and retries only when every copy failed; the hedge reads
//!   the total timeout's deadline and sends no copy that cannot finish.
//! - **The rate limit below the retry, above the breaker and bulkhead**:
//!   each attempt is a request the dependency's quota counts; a call it
//!   rejects takes no bulkhead permit and is no outcome for the breaker;
//!   its [`RateLimited`](crate::rate_limit::RateLimited) is a rejection the
//!   retry does not retry (so never before its `Retry-After`), and its wait
//!   for a permit ends at the total timeout's deadline. On the server, the
//!   rate limit sits above load shedding: a `429` takes no shedding permit.
//! - **The bulkhead below the breaker**: calls the breaker rejects take no
//!   permit; a full bulkhead is a local condition, not a failure of the
//!   dependency, so the breaker does not count it.
//! - **The attempt timeout below the bulkhead**: the wait for a permit is not
//!   charged to the attempt, and a timed-out attempt frees its permit.
//! - **Discovery innermost**: the balancer sees each attempt's outcome for
//!   outlier ejection, and a retry can go to a different endpoint.
//! - **Correlation and token outermost**: every attempt carries the same
//!   id and trace id, and the token allowlist is checked against the
//!   logical authority before discovery rewrites it.
//!
//! # Hedge, fallback and coalescing
//!
//! ```toml
//! [client.catalog]
//! hedge = { delay = "p95", max = 1, budget = 0.05, min_samples = 100 }   # or delay = "10ms"
//! fallback = { on = "rejections", ttl = "60s", answer = { status = 200, body = "[]" } }
//! coalesce = { max_keys = 10000 }
//! ```
//!
//! All three are off in every preset. The hedge works with
//! [`ClientConfig::http_stack`] and [`ClientConfig::grpc_stack`] and copies
//! only what the retry would resend. The fallback and coalescing keep or
//! share responses: they need a buffered response body (`Clone`, made
//! from `Bytes`: `Full<Bytes>`), so a configuration with either is built
//! with [`ClientConfig::buffered_http_stack`] (the others return
//! [`StackError::NeedsBufferedBody`]). A file can ask for a stale-cache or
//! a fixed fallback answer; a closure or a second service as the fallback
//! is code only ([`FallbackLayer`](crate::fallback::FallbackLayer), put
//! above the stack).
//!
//! # What is retried
//!
//! Only what is safe to send again:
//!
//! - [`ClientConfig::http_stack`]: idempotent methods (GET, HEAD, OPTIONS,
//!   TRACE, PUT, DELETE, and the methods named in `retry.idempotent`, e.g.
//!   `["POST"]`); any other request is sent once, whatever the failure — a
//!   `503`, an error, a per-attempt timeout.
//! - [`ClientConfig::grpc_stack`]: as gRPC's retry design (gRFC A6) says, a
//!   call is retried only when the server did not process it —
//!   `UNAVAILABLE`, `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`, a
//!   connection refused — never after `DEADLINE_EXCEEDED`, `INTERNAL`,
//!   `UNKNOWN`, another transport error or a per-attempt timeout, unless
//!   its method is named in `retry.idempotent` by full path
//!   (`/orders.v1.Orders/GetOrder`, or `/orders.v1.Orders/*` for a whole
//!   service).
//! - `Retry-After` and `grpc-retry-pushback-ms` are waited out in full, even
//!   beyond the backoff's `max_delay`; when the wait would end after the
//!   total timeout, or is longer than `retry.max_pushback` (default 5
//!   minutes), no retry is made and the caller gets the server's answer at
//!   once.
//!
//! ```toml
//! [client.orders]
//! retry = { max_retries = 2, idempotent = ["/orders.v1.Orders/GetOrder", "/orders.v1.Orders/ListOrders"] }
//! ```
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::stack::MeshConfig;
//!
//! let cfg = MeshConfig::from_toml_str(r#"
//!     preset = "testing"
//!     [client.orders]
//!     timeout = { attempt = "200ms", total = "1s" }
//!     retry = { max_retries = 1 }
//!     [server]
//!     max_concurrent_requests = 64
//! "#).unwrap();
//! let orders = cfg.client("orders").unwrap();
//! assert_eq!(orders.retry.as_ref().unwrap().max_retries, 1);
//! assert_eq!(orders.circuit_breaker.as_ref().unwrap().minimum_calls, 2); // from the preset
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let client = ServiceBuilder::new()
//!     .layer(orders.http_stack().unwrap())
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! assert_eq!(client.oneshot(http::Request::new(String::new())).await.unwrap().status(), 200);
//! # });
//!
//! // Values that cannot work together are an error, not a surprise at run time.
//! let err = MeshConfig::from_toml_str(r#"
//!     [client.payments]
//!     timeout = { attempt = "5s", total = "1s" }
//! "#).unwrap_err();
//! assert!(std::error::Error::source(&err).unwrap().to_string().contains("timeout.attempt"));
//! ```
//!
//! [`CircuitOpen`]: crate::circuit_breaker::CircuitOpen
//! [`RetryRejected`]: crate::retry::RetryRejected

mod buffered;
mod client;
mod config;
mod error;
mod load;
mod observe;
mod optional;
mod server;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_answers;

pub use buffered::{Answers, BufferedHttpService, BufferedHttpStack};
pub use client::{AttemptService, ClientService, ClientStack, Passthrough};
pub use config::{ClientConfig, MeshConfig, Preset, ServerConfig};
pub use error::StackError;
pub use load::{CONFIG_FILE_ENV, ENV_PREFIX};
pub use observe::{Observe, ObserveFuture, ObserveLayer, Side};
pub use optional::{Opt, Optional, OptionalFuture};
pub use server::{ServerService, ServerStack};
