//! The discovery layer and its builder.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::balance::{Balance, OutlierConfig, Shared};
use super::registry::Registry;
use super::service::Discovery;
use crate::classify::ResultClassifier;
use crate::config::ConfigError;

/// Routes requests for logical services to live endpoints: see the
/// [module docs](super).
#[derive(Clone)]
pub struct DiscoveryLayer<C = ResultClassifier> {
    registry: Registry,
    shared: Arc<Shared>,
    fixed: Option<Arc<str>>,
    keep_host: bool,
    classifier: C,
}

impl<C> fmt::Debug for DiscoveryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryLayer")
            .field("registry", &self.registry)
            .field("service", &self.fixed)
            .field("balance", &self.shared.balance)
            .field("outlier", &self.shared.outlier)
            .field("keep_host", &self.keep_host)
            .finish()
    }
}

impl DiscoveryLayer {
    /// Resolve each request's URI host (`http://orders/…` → service `orders`)
    /// in `registry`, with p2c peak-EWMA balancing, default outlier ejection
    /// and the [`ResultClassifier`].
    pub fn new(registry: Registry) -> Self {
        DiscoveryLayer::builder(registry).build().expect("default discovery settings are valid")
    }

    /// A builder.
    pub fn builder(registry: Registry) -> DiscoveryBuilder {
        DiscoveryBuilder {
            registry,
            name: "discovery".into(),
            fixed: None,
            balance: Balance::default(),
            outlier: OutlierConfig::default(),
            keep_host: false,
            classifier: ResultClassifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for DiscoveryLayer<C> {
    type Service = Discovery<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Discovery::new(
            inner,
            self.registry.clone(),
            self.shared.clone(),
            self.fixed.clone(),
            self.keep_host,
            self.classifier.clone(),
        )
    }
}

/// Builder of a [`DiscoveryLayer`].
#[derive(Debug)]
pub struct DiscoveryBuilder<C = ResultClassifier> {
    registry: Registry,
    name: String,
    fixed: Option<String>,
    balance: Balance,
    outlier: OutlierConfig,
    keep_host: bool,
    classifier: C,
}

/// The old name of [`DiscoveryBuilder`].
#[deprecated(note = "renamed to DiscoveryBuilder")]
pub type DiscoveryLayerBuilder<C = ResultClassifier> = DiscoveryBuilder<C>;

impl<C> DiscoveryBuilder<C> {
    /// Name of the layer in logs (the `service` metric label is the logical service).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Route every request to this logical service, whatever its URI says.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.fixed = Some(service.into());
        self
    }

    /// How to pick an endpoint (default p2c over peak-EWMA).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// Outlier ejection settings.
    pub fn outlier(mut self, outlier: OutlierConfig) -> Self {
        self.outlier = outlier;
        self
    }

    /// Keep the original (logical) authority as the `Host` header when the
    /// request has none (default: the endpoint's authority is the host).
    pub fn keep_host(mut self, keep: bool) -> Self {
        self.keep_host = keep;
        self
    }

    /// What counts as a failure for outlier detection (e.g.
    /// [`HttpClassifier`](crate::classify::HttpClassifier) for HTTP, so a 503
    /// counts). Default: [`ResultClassifier`] (errors only).
    pub fn classifier<C2>(self, classifier: C2) -> DiscoveryBuilder<C2> {
        DiscoveryBuilder {
            registry: self.registry,
            name: self.name,
            fixed: self.fixed,
            balance: self.balance,
            outlier: self.outlier,
            keep_host: self.keep_host,
            classifier,
        }
    }

    /// Validate and build.
    pub fn build(self) -> Result<DiscoveryLayer<C>, ConfigError> {
        self.outlier.validate()?;
        Ok(DiscoveryLayer {
            registry: self.registry,
            shared: Arc::new(Shared::new(self.name.into(), self.balance, self.outlier)),
            fixed: self.fixed.map(Arc::from),
            keep_host: self.keep_host,
            classifier: self.classifier,
        })
    }
}
