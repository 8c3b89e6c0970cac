use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tower_layer::Layer;

use super::delay::Delay;
use super::{Hedge, HedgeDelay};
use crate::classify::ResultClassifier;
use crate::config::ConfigError;
use crate::retry::{CloneRequests, RetryBudget};

/// Per-layer state shared by every service and future the layer makes.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) max_hedges: u32,
    pub(crate) delay: Delay,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) sent: Counter,
    pub(crate) won: Counter,
    pub(crate) budget_exhausted: Counter,
}

/// Everything a hedged call needs, shared by a [`Hedge`] and its clones.
#[derive(Clone)]
pub(crate) struct Settings<C, P> {
    pub(crate) classifier: C,
    pub(crate) requests: P,
    pub(crate) shared: Arc<Shared>,
}

/// Sends a copy of a slow request and takes the first good answer: see the
/// [module docs](super).
#[derive(Clone)]
pub struct HedgeLayer<C = ResultClassifier, P = CloneRequests> {
    settings: Settings<C, P>,
}

impl<C, P> fmt::Debug for HedgeLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings.shared;
        f.debug_struct("HedgeLayer")
            .field("name", &s.name)
            .field("max_hedges", &s.max_hedges)
            .field("delay", &s.delay)
            .field("budget", &s.budget)
            .finish_non_exhaustive()
    }
}

impl HedgeLayer {
    /// Start building a hedge layer (defaults: one hedge after the p95 of
    /// recent latencies, at most 5 % of requests).
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            name: "default".into(),
            delay: HedgeDelay::percentile(95.0),
            max_hedges: 1,
            budget: Budget::Ratio(0.05),
            classifier: ResultClassifier,
            requests: CloneRequests,
        }
    }
}

impl<C, P> HedgeLayer<C, P> {
    /// The budget hedges are taken from, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.settings.shared.budget.as_ref()
    }

    /// The delay before a hedge now (`None`: not known yet, no hedging).
    pub fn current_delay(&self) -> Option<Duration> {
        self.settings.shared.delay.current()
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for HedgeLayer<C, P> {
    type Service = Hedge<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::new(inner, self.settings.clone())
    }
}

enum Budget {
    None,
    Ratio(f64),
    Shared(RetryBudget),
}

/// Builds a [`HedgeLayer`]; start with [`HedgeLayer::builder`].
pub struct HedgeBuilder<C = ResultClassifier, P = CloneRequests> {
    name: String,
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Budget,
    classifier: C,
    requests: P,
}

impl<C, P> fmt::Debug for HedgeBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("name", &self.name)
            .field("delay", &self.delay)
            .field("max_hedges", &self.max_hedges)
            .finish_non_exhaustive()
    }
}

/// Window of a budget made from a ratio.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl<C, P> HedgeBuilder<C, P> {
    /// The `service` label of the metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// When a hedge is sent.
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Copies sent after the first request, each a delay after the previous
    /// one (0 turns hedging off).
    pub fn max_hedges(mut self, max: u32) -> Self {
        self.max_hedges = max;
        self
    }

    /// Hedges may be at most `ratio` (0 – 1) of the requests of the last 10 s.
    pub fn budget_ratio(mut self, ratio: f64) -> Self {
        self.budget = Budget::Ratio(ratio);
        self
    }

    /// Take hedges from this budget (a [`RetryBudget`]: one hedge costs one
    /// retry; it may be shared with a retry layer).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Budget::Shared(budget);
        self
    }

    /// No budget: every slow safe request is hedged.
    pub fn no_budget(mut self) -> Self {
        self.budget = Budget::None;
        self
    }

    /// Which answers are good (a failure does not win: the other copies
    /// are waited for).
    pub fn classifier<C2>(self, classifier: C2) -> HedgeBuilder<C2, P> {
        let HedgeBuilder { name, delay, max_hedges, budget, requests, .. } = self;
        HedgeBuilder { name, delay, max_hedges, budget, classifier, requests }
    }

    /// Which requests may be hedged and how they are copied — the retry
    /// layer's policies: [`CloneRequests`] (default),
    /// [`HttpRequests`](crate::retry::HttpRequests) (idempotent methods,
    /// bodies in memory), [`GrpcRequests`](crate::retry::GrpcRequests)
    /// (methods marked idempotent only).
    pub fn requests<P2>(self, requests: P2) -> HedgeBuilder<C, P2> {
        let HedgeBuilder { name, delay, max_hedges, budget, classifier, .. } = self;
        HedgeBuilder { name, delay, max_hedges, budget, classifier, requests }
    }

    /// Validate and build.
    pub fn build(self) -> Result<HedgeLayer<C, P>, ConfigError> {
        self.delay.validate()?;
        let budget = match self.budget {
            Budget::None => None,
            Budget::Ratio(r) if !(0.0..=1.0).contains(&r) => {
                return Err(ConfigError::OutOfRange { field: "hedge.budget", value: r, min: 0.0, max: 1.0 })
            }
            Budget::Ratio(r) => Some(RetryBudget::new(BUDGET_WINDOW, 0, r)),
            Budget::Shared(b) => Some(b),
        };
        let label = self.name.clone();
        let shared = Shared {
            sent: metrics::counter!("tower_mesh_hedge_sent_total", "service" => label.clone()),
            won: metrics::counter!("tower_mesh_hedge_won_total", "service" => label.clone()),
            budget_exhausted: metrics::counter!("tower_mesh_hedge_budget_exhausted_total", "service" => label),
            name: self.name,
            max_hedges: self.max_hedges,
            delay: Delay::new(self.delay),
            budget,
        };
        Ok(HedgeLayer {
            settings: Settings { classifier: self.classifier, requests: self.requests, shared: Arc::new(shared) },
        })
    }
}
