//! The adaptive concurrency layer, its builder and its handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::algorithm::{Aimd, Algorithm, Gradient2};
use super::config::{AdaptiveConcurrencyConfig, AlgorithmKind};
use super::limiter::{Limiter, Shared};
use super::service::AdaptiveConcurrency;
use crate::classify::ResultClassifier;
use crate::config::ConfigError;

const DEFAULT_NAME: &str = "adaptive_concurrency";

/// Layer that limits how many calls run at once, the limit moving with the
/// latency and failures the calls see: Netflix's concurrency-limits, Envoy's
/// adaptive concurrency filter. See the [module docs](super).
///
/// All services the layer makes (and their clones) share one limit.
#[derive(Clone)]
pub struct AdaptiveConcurrencyLayer<C = ResultClassifier> {
    shared: Arc<Shared<C>>,
}

impl AdaptiveConcurrencyLayer {
    /// A builder, starting from [`AdaptiveConcurrencyConfig::default`]
    /// (Gradient2, limit 20 within `[1, 1000]`, no wait) and the
    /// [`ResultClassifier`].
    pub fn builder() -> AdaptiveConcurrencyBuilder {
        AdaptiveConcurrencyBuilder {
            name: None,
            config: AdaptiveConcurrencyConfig::default(),
            classifier: ResultClassifier,
        }
    }

    /// A layer from a validated config, named `"adaptive_concurrency"`.
    pub fn from_config(config: &AdaptiveConcurrencyConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }
}

impl<C> AdaptiveConcurrencyLayer<C> {
    /// A handle to read the limit and the calls in flight.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle { limiter: self.shared.limiter.clone() }
    }

    /// The name (the `service` label of the metrics).
    pub fn name(&self) -> &str {
        &self.shared.limiter.name
    }
}

impl<C> fmt::Debug for AdaptiveConcurrencyLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AdaptiveConcurrencyLayer").field(&self.shared.limiter).finish()
    }
}

impl<S, C> Layer<S> for AdaptiveConcurrencyLayer<C> {
    type Service = AdaptiveConcurrency<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrency::new(inner, self.shared.clone())
    }
}

/// Reads the current limit and calls in flight of an
/// [`AdaptiveConcurrencyLayer`] (for tests, health pages, dashboards).
#[derive(Clone)]
pub struct LimitHandle {
    limiter: Arc<Limiter>,
}

impl LimitHandle {
    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limiter.limit()
    }

    /// Calls in flight now (including slots taken by `poll_ready` for a call
    /// not made yet).
    pub fn in_flight(&self) -> usize {
        self.limiter.in_flight()
    }

    /// Gradient2's long-term RTT estimate, once a call has completed (`None`
    /// with AIMD).
    pub fn long_rtt(&self) -> Option<Duration> {
        self.limiter.long_rtt()
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.limiter.name
    }
}

impl fmt::Debug for LimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LimitHandle").field(&self.limiter).finish()
    }
}

/// Builder of an [`AdaptiveConcurrencyLayer`].
#[derive(Clone, Debug)]
pub struct AdaptiveConcurrencyBuilder<C = ResultClassifier> {
    name: Option<String>,
    config: AdaptiveConcurrencyConfig,
    classifier: C,
}

impl<C> AdaptiveConcurrencyBuilder<C> {
    /// The name used in errors, logs and as the `service` label of the
    /// metrics. Default `"adaptive_concurrency"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Use [`Gradient2`] with these settings (the default algorithm).
    pub fn gradient2(mut self, gradient2: Gradient2) -> Self {
        self.config.algorithm = AlgorithmKind::Gradient2;
        self.config.gradient2 = gradient2;
        self
    }

    /// Use [`Aimd`] with these settings.
    pub fn aimd(mut self, aimd: Aimd) -> Self {
        self.config.algorithm = AlgorithmKind::Aimd;
        self.config.aimd = aimd;
        self
    }

    /// The limit to start from. Default 20.
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.config.initial_limit = limit;
        self
    }

    /// The smallest limit. Default 1.
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.config.min_limit = limit;
        self
    }

    /// The largest limit. Default 1000.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.config.max_limit = limit;
        self
    }

    /// How long a call may wait for a free slot before it is rejected (at
    /// most `limit` calls wait at once). Default zero: reject at once.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// Take every value from `config`.
    pub fn config(mut self, config: &AdaptiveConcurrencyConfig) -> Self {
        self.config = config.clone();
        self
    }

    /// The classifier deciding which results are drops (failures shrink
    /// the AIMD limit; Gradient2 leaves their latency out), as for the
    /// [circuit breaker](crate::circuit_breaker). Default [`ResultClassifier`]:
    /// every `Err`.
    pub fn classifier<C2>(self, classifier: C2) -> AdaptiveConcurrencyBuilder<C2> {
        AdaptiveConcurrencyBuilder { name: self.name, config: self.config, classifier }
    }

    /// Validate and build.
    pub fn build(self) -> Result<AdaptiveConcurrencyLayer<C>, ConfigError> {
        let config = self.config;
        config.validate()?;
        let name: Arc<str> = self.name.as_deref().unwrap_or(DEFAULT_NAME).into();
        let algorithm = match config.algorithm {
            AlgorithmKind::Gradient2 => Algorithm::gradient2(config.gradient2),
            AlgorithmKind::Aimd => Algorithm::aimd(config.aimd),
        };
        let limits = [config.initial_limit, config.min_limit, config.max_limit];
        let limiter = Arc::new(Limiter::new(name, limits, config.max_wait, algorithm));
        Ok(AdaptiveConcurrencyLayer { shared: Arc::new(Shared { limiter, classifier: self.classifier }) })
    }
}
