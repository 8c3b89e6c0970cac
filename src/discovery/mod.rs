//! Service discovery: logical names to live endpoints, with balancing and
//! passive health checking.
//!
//! A [`Registry`] maps logical service names (`orders`) to their current
//! endpoint sets (`10.0.0.7:8080`, …). Sources fill it: a static list
//! ([`Registry::set_static`]), or a backend task that calls
//! [`Registry::set`] whenever its view changes and [`Registry::mark_stale`]
//! when it cannot refresh (the last known set keeps serving:
//! stale-while-error).
//!
//! [`DiscoveryLayer`] sits around an HTTP client (a hyper-util legacy client, a
//! tonic channel's transport, …). For each request it takes the logical service
//! from the URI host (`http://orders/v1/items`) or a fixed name, picks an
//! endpoint — power of two choices over peak-EWMA load by default (the
//! algorithm of tower's `p2c::Balance` with `PeakEwma`), round-robin as an
//! option — and rewrites the URI to it (keeping the original `Host` if asked).
//! An empty endpoint set fails at once with [`DiscoveryError::NoEndpoints`].
//!
//! **Outlier ejection** (Envoy-style, [`OutlierConfig`]): the layer's
//! classifier decides each call's outcome; an endpoint failing
//! `consecutive_failures` times in a row is ejected for a time that grows with
//! each ejection, never more than `max_ejection_percent` of the endpoints at
//! once, and then gets traffic again. The cap check and the ejection are one
//! step per service: when two endpoints reach their threshold at the same
//! moment, one decision is made and the other endpoint is considered again at
//! its next failure, so concurrent failures never eject past the cap.
//!
//! **Watching sources** keep what they learnt and resume instead of starting
//! over, and never wait for ever on a dead connection:
//!
//! | source | resumes from | lists again on | idle timeout (default) |
//! |---|---|---|---|
//! | Kubernetes | the `resourceVersion` of the last event or BOOKMARK (`allowWatchBookmarks=true`, `timeoutSeconds=300`) | `410 Gone` (status or `ERROR` event) | 3 min: three one-minute bookmark intervals |
//! | etcd | the revision after the last event or progress notification (`progress_notify`) | compaction, cancellation | 20 min: two of etcd's 10-minute progress intervals |
//! | Consul | the `X-Consul-Index` answered (0 taken as 1; one lower than before restarts from 0) | — | `wait + wait/16 + 10 s` per blocking query |
//!
//! A watch silent (no event, bookmark or progress notification) for its
//! idle timeout — set with `idle_timeout` on the source — is taken for a dead
//! connection: the source reconnects at once from where it was. A reconnect
//! that fails, or a second silent watch in a row, marks the endpoints stale
//! (the last set keeps serving) and retries with backoff (100 ms doubling to
//! 10 s); the next line a live watch sends clears the mark. The default
//! [`HttpClient`] sets TCP keepalive (30 s idle, then a probe every 10 s, 3
//! probes), so a vanished peer fails the connection in about a minute even
//! between heartbeats.
//!
//! For tonic, [`Registry::feed_changes`] feeds the same endpoint changes into
//! the sender of `Channel::balance_channel`.
//!
//! ```
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::classify::HttpClassifier;
//! use tower_mesh::discovery::{DiscoveryLayer, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_mesh::BoxError> {
//! let registry = Registry::new();
//! registry.set_static("orders", ["10.0.0.1:8080", "10.0.0.2:8080"])?;
//!
//! // Stands in for a hyper-util client: answers with the URI it was sent to.
//! let client = tower::service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().to_string()))
//! });
//! let mut svc = ServiceBuilder::new()
//!     .layer(DiscoveryLayer::builder(registry).classifier(HttpClassifier::new()).build()?)
//!     .service(client);
//!
//! let req = http::Request::get("http://orders/v1/items").body(())?;
//! let res = svc.ready().await?.call(req).await?;
//! assert!(res.body().starts_with("http://10.0.0."));
//! assert!(res.body().ends_with(":8080/v1/items"));
//! # Ok(())
//! # }
//! ```
//!
//! Metrics (label `service` = the logical service):
//! `tower_mesh_discovery_endpoints` (gauge), `tower_mesh_discovery_stale`
//! (gauge, 1 while the source is failing), `tower_mesh_discovery_ejections_total`,
//! `tower_mesh_discovery_no_endpoints_total`; per source (labels `service`,
//! `source`): `tower_mesh_discovery_source_errors_total` and
//! `tower_mesh_discovery_watch_idle_total` (watches reconnected after their
//! idle timeout). Endpoint-set changes, ejections, source failures and silent
//! watches are `tracing` events.

mod balance;
#[cfg(feature = "discovery-consul")]
mod consul;
#[cfg(feature = "discovery-dns")]
mod dns;
mod error;
#[cfg(feature = "discovery-etcd")]
mod etcd;
mod future;
#[cfg(feature = "discovery-k8s")]
mod kubernetes;
mod layer;
mod registry;
mod service;
#[cfg(any(
    feature = "discovery-consul",
    feature = "discovery-etcd",
    feature = "discovery-k8s",
    feature = "discovery-dns"
))]
mod source;

#[cfg(test)]
mod tests;

pub use balance::{Balance, OutlierConfig};
#[cfg(feature = "discovery-consul")]
pub use consul::ConsulSource;
#[cfg(feature = "discovery-dns")]
pub use dns::{DnsSource, DnsSourceError};
pub use error::DiscoveryError;
#[cfg(feature = "discovery-etcd")]
pub use etcd::EtcdSource;
pub use future::ResponseFuture;
#[cfg(feature = "discovery-k8s")]
pub use kubernetes::KubernetesSource;
#[allow(deprecated)]
pub use layer::DiscoveryLayerBuilder;
pub use layer::{DiscoveryBuilder, DiscoveryLayer};
pub use registry::{parse_endpoints, Registry, Resolution};
pub use service::Discovery;
#[cfg(any(
    feature = "discovery-consul",
    feature = "discovery-etcd",
    feature = "discovery-k8s",
    feature = "discovery-dns"
))]
pub use source::SourceTask;
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub use source::{BoxBody, HttpClient};
