//! Bulkhead: limit how many calls run at once, so one slow dependency cannot
//! take every task, connection or thread of the process.
//!
//! The equivalent of resilience4j's (semaphore) `Bulkhead` and of tower's
//! `ConcurrencyLimit` / `GlobalConcurrencyLimitLayer`, with a maximum wait,
//! a typed rejection, metrics and optional partitions:
//!
//! - [`BulkheadLayer`] holds a pool of `max_concurrent_calls` permits shared
//!   by every service it makes. A service takes a permit in `poll_ready` (a
//!   non-blocking `try_acquire` first: no allocation, no waiting when one is
//!   free). If none is free it waits up to `max_wait` for one; with `max_wait`
//!   zero (the default, as in resilience4j) it does not wait at all.
//! - A call that gets no permit is **rejected by its response future** with
//!   [`BulkheadFull`]: `poll_ready` still returns `Ready(Ok(()))`, so a
//!   `Buffer` or `Balance` above does not see a failed service. (tower's
//!   `ConcurrencyLimit` instead stays `Pending` until a permit frees up —
//!   that is this layer with an infinite `max_wait`.)
//! - The permit moves into the [`ResponseFuture`] and is released when the
//!   call completes or the future is dropped (cancellation), or — if the call
//!   never happens — when the service holding it is dropped. A clone of a
//!   service does not share its permit.
//! - [`KeyedBulkheadLayer`] ([`BulkheadLayer::keyed`], [`BulkheadBuilder::key`])
//!   gives each key (a host, a dependency, a tenant) its own pool of the
//!   same size; idle partitions are dropped as new keys come in. At most
//!   `max_keys` partitions (default 1024) exist at once: keys may come from
//!   what clients send; when all of them have calls in flight, a new key
//!   shares one overflow partition with the other keys in that situation.
//!
//! Servers answer [`BulkheadFull`] with `503` / gRPC `RESOURCE_EXHAUSTED`
//! (see [`ServerErrorLayer`](crate::error::ServerErrorLayer)).
//!
//! # Metrics
//!
//! Labelled `service` = the bulkhead's name (default `"bulkhead"`):
//! `tower_mesh_bulkhead_in_flight` (gauge), `tower_mesh_bulkhead_rejections_total`
//! (counter) and `tower_mesh_bulkhead_permit_wait_seconds` (histogram of the
//! waits of calls that found no free permit). A keyed bulkhead adds
//! `tower_mesh_bulkhead_partitions` (gauge) and
//! `tower_mesh_bulkhead_key_overflow_total` (calls that used the overflow
//! partition); its metrics carry no per-key label, so their number of series
//! does not grow with the keys. A rejection also emits a `debug` tracing
//! event; the first use of the overflow partition a warning.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::bulkhead::{BulkheadFull, BulkheadLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(1))
//!     .service_fn(|_: ()| async {
//!         tokio::time::sleep(Duration::from_millis(10)).await;
//!         Ok::<_, std::convert::Infallible>("done")
//!     });
//!
//! let first = svc.ready().await.unwrap().call(()); // holds the only permit
//! let second = svc.ready().await.unwrap().call(()); // rejected at once
//! assert!(second.await.unwrap_err().is::<BulkheadFull>());
//! assert_eq!(first.await.unwrap(), "done");
//! # }
//! ```

mod config;
mod error;
mod future;
mod keyed;
mod layer;
mod pool;
mod service;
mod shared;
mod sync;

pub use config::BulkheadConfig;
pub use error::BulkheadFull;
pub use future::{KeyedResponseFuture, ResponseFuture};
pub use keyed::{KeyedBulkhead, KeyedBulkheadBuilder, KeyedBulkheadLayer};
pub use layer::{BulkheadBuilder, BulkheadLayer};
pub use pool::BulkheadPermit;
pub use service::Bulkhead;

#[cfg(test)]
mod tests;
