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
//! once, and then gets traffic again.
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
//! `tower_mesh_discovery_no_endpoints_total`. Endpoint-set changes and
//! ejections are `tracing` events.

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
pub use layer::{DiscoveryLayer, DiscoveryLayerBuilder};
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
