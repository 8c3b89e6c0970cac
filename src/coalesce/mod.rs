//! Request coalescing ("single flight"): identical requests in flight share
//! one call.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::coalesce::{http_key, CoalesceLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(CoalesceLayer::new(http_key))
//!     .service_fn(move |_: Request<()>| {
//!         counted.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             tokio::task::yield_now().await; // still in flight when the others come
//!             Ok::<_, std::convert::Infallible>(Response::new("menu".to_owned()))
//!         }
//!     });
//!
//! let get = || svc.clone().oneshot(Request::get("/menu").body(()).unwrap());
//! let (a, b, c) = tokio::join!(get(), get(), get());
//! assert_eq!((a.unwrap().body(), b.unwrap().body(), c.unwrap().body()), (&"menu".into(), &"menu".into(), &"menu".into()));
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! The equivalent of Go's `singleflight` and of the request collapsing of
//! caches and CDNs. [`CoalesceLayer::new(key)`](CoalesceLayer::new) maps
//! each request to a key (`None`: never shared); [`http_key`] takes the
//! method and URI of `GET` and `HEAD` requests (other methods are not
//! idempotent, or not safe to answer twice with one response).
//!
//! - The first request with a key runs the call; requests with that key
//!   that come while it runs wait for its answer, a clone of it (so the
//!   response type is `Clone`: buffer streaming bodies, e.g. into
//!   `Full<Bytes>`, below the layer). An error reaches every one of them as
//!   a [`CoalescedError`] whose source is the first caller's error.
//! - A waiter that goes away does not disturb the others. When the caller
//!   running the call goes away, its call is dropped and a waiter runs it
//!   again with its own request (it kept a clone of the service); the
//!   others wait for that one.
//! - At most [`max_keys`](CoalesceLayer::max_keys) keys are in flight; a
//!   request with a new key beyond that runs alone. The services a layer
//!   makes (its clones) share the calls in flight.
//!
//! A request that runs its own call costs, more than the bare call, the
//! hash of its key and two short lock holds (an insert into a table of
//! calls in flight, and the removal of its entry, found by hash and an id
//! without comparing keys); its key is moved into the table, not cloned.
//! One that waits costs one allocation (its wait), and saves a call. Put the layer high in a client stack, so
//! a shared call takes one permit of the bulkhead, breaker or rate limiter
//! below.
//!
//! [`CoalesceConfig`] is the layer of an HTTP client as configuration
//! (`max_keys`).
//!
//! # Metrics
//!
//! `tower_mesh_coalesce_calls_total{service, role}` counts requests by
//! role: `leader` (ran a shared call), `follower` (waited for one), `alone`
//! (beyond `max_keys`), `takeover` (a waiter that ran the call again).

mod flight;
mod future;
mod layer;
mod service;

#[cfg(test)]
mod tests;

pub use crate::request_key::{http_key, HttpKey};
pub use flight::CoalescedError;
pub use future::ResponseFuture;
pub use layer::CoalesceLayer;
pub use service::Coalesce;

/// Request coalescing for an HTTP client, as configuration:
/// `coalesce = { max_keys = 10000 }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceConfig {
    /// The most keys in flight (default 10,000).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    layer::MAX_KEYS
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig { max_keys: default_max_keys() }
    }
}

/// The key function of [`CoalesceConfig::http_layer`].
pub type HttpKeyFn<B> = fn(&http::Request<B>) -> Option<crate::request_key::HttpKey>;

impl CoalesceConfig {
    /// Check the values: `max_keys` is not zero.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        crate::config::check_nonzero("coalesce.max_keys", self.max_keys == 0)
    }

    /// The layer: `GET` / `HEAD` requests to the same URI share a call.
    pub fn http_layer<B, Res>(&self, name: &str) -> CoalesceLayer<crate::request_key::HttpKey, HttpKeyFn<B>, Res> {
        CoalesceLayer::new(http_key as HttpKeyFn<B>).max_keys(self.max_keys).name(name)
    }
}

/// What a key of [`CoalesceLayer`] is: any `Hash + Eq` type.
pub trait Key: std::hash::Hash + Eq {}

impl<K: std::hash::Hash + Eq> Key for K {}
