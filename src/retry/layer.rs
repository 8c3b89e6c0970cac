use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;
use tower_layer::Layer;

use super::{Backoff, CloneRequests, HttpRequests, Retry, RetryBudget, RetryConfig};
use crate::classify::{FailureKind, ResultClassifier};
use crate::config::ConfigError;

/// What every call of a layer shares beside its classifier and request
/// policy: the name, the budget, the backoff and the metric handles.
pub(crate) struct Common {
    pub(crate) name: String,
    pub(crate) budget: Option<RetryBudget>,
    // Needed only once a call failed: kept here, out of every response future.
    pub(crate) backoff: Backoff,
    pub(crate) max_pushback: Duration,
    // The jitter's generator when the backoff is seeded; locked only to draw
    // one delay.
    rng: Option<Mutex<fastrand::Rng>>,
    pub(crate) retry_if: Option<fn(&FailureKind) -> bool>,
    pub(crate) attempts: Counter,
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) exhausted: Counter,
}

impl Common {
    fn new(
        name: String,
        budget: Option<RetryBudget>,
        backoff: Backoff,
        max_pushback: Duration,
        retry_if: Option<fn(&FailureKind) -> bool>,
    ) -> Self {
        let label = name.clone();
        Common {
            attempts: metrics::counter!("tower_mesh_retry_attempts_total", "service" => label.clone()),
            retries: metrics::counter!("tower_mesh_retry_retries_total", "service" => label.clone()),
            budget_exhausted: metrics::counter!("tower_mesh_retry_budget_exhausted_total", "service" => label.clone()),
            exhausted: metrics::counter!("tower_mesh_retry_exhausted_total", "service" => label),
            name,
            budget,
            rng: backoff.seed.map(|seed| Mutex::new(fastrand::Rng::with_seed(seed))),
            backoff,
            max_pushback,
            retry_if,
        }
    }

    /// The backoff delay before retry number `retry`, with the seeded
    /// generator if there is one.
    pub(crate) fn delay(&self, retry: u32, previous: Duration) -> Duration {
        match &self.rng {
            Some(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                self.backoff.delay_with(retry, previous, || rng.f64())
            }
            None => self.backoff.delay(retry, previous),
        }
    }
}

/// Everything a retrying call needs. A [`Retry`] service and its clones share
/// one copy behind an `Arc`, so a response future holds a pointer, not the
/// classifier and request policy themselves.
#[derive(Clone)]
pub(crate) struct Settings<C, P> {
    pub(crate) max_retries: u32,
    pub(crate) classifier: C,
    pub(crate) requests: P,
    pub(crate) common: Arc<Common>,
}

/// Retries failed calls with exponential backoff and jitter: see the
/// [module docs](super).
///
/// For HTTP, pair the [`HttpClassifier`](crate::classify::HttpClassifier)
/// (5xx and 429 are failures) with [`HttpRequests`] (idempotent methods,
/// buffered bodies, `Retry-After`):
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::classify::HttpClassifier;
/// use tower_mesh::retry::{RetryConfig, RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let c = calls.clone();
/// let backend = tower::service_fn(move |_req: Request<Full<Bytes>>| {
///     let status = if c.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
///     async move {
///         let mut res = Response::new(Full::new(Bytes::new()));
///         *res.status_mut() = StatusCode::from_u16(status).unwrap();
///         Ok::<_, std::convert::Infallible>(res)
///     }
/// });
/// let retry = RetryLayer::from_config(&RetryConfig::standard())
///     .unwrap()
///     .with_classifier(HttpClassifier::default())
///     .with_requests(tower_mesh::retry::HttpRequests::new());
/// let svc = ServiceBuilder::new().layer(retry).service(backend);
///
/// let res = svc.oneshot(Request::get("/orders").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
/// assert_eq!(res.status(), StatusCode::OK);
/// assert_eq!(calls.load(Ordering::SeqCst), 2); // the 503 was retried once
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer<C = ResultClassifier, P = CloneRequests> {
    settings: Settings<C, P>,
}

impl<C, P> fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.settings.common.name)
            .field("max_retries", &self.settings.max_retries)
            .field("backoff", &self.settings.common.backoff)
            .field("budget", &self.settings.common.budget)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// Start building a retry layer.
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            config: RetryConfig::default(),
            budget: None,
            retry_if: None,
            classifier: ResultClassifier,
            requests: CloneRequests,
        }
    }

    /// A layer from a validated [`RetryConfig`].
    pub fn from_config(config: &RetryConfig) -> Result<Self, ConfigError> {
        RetryBuilder { config: config.clone(), ..RetryLayer::builder() }.build()
    }
}

impl<C, P> RetryLayer<C, P> {
    /// Use `classifier` to decide which results are failures (and so retried).
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2, P> {
        let s = self.settings;
        RetryLayer {
            settings: Settings { max_retries: s.max_retries, classifier, requests: s.requests, common: s.common },
        }
    }

    /// Use `requests` to copy requests and read server pushback, e.g.
    /// [`HttpRequests`].
    pub fn with_requests<P2>(self, requests: P2) -> RetryLayer<C, P2> {
        let s = self.settings;
        RetryLayer {
            settings: Settings { max_retries: s.max_retries, classifier: s.classifier, requests, common: s.common },
        }
    }

    /// The budget shared by the services of this layer, if it has one.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.settings.common.budget.as_ref()
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for RetryLayer<C, P> {
    type Service = Retry<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.settings.clone())
    }
}

/// Builds a [`RetryLayer`]; start with [`RetryLayer::builder`].
pub struct RetryBuilder<C = ResultClassifier, P = CloneRequests> {
    config: RetryConfig,
    budget: Option<RetryBudget>,
    retry_if: Option<fn(&FailureKind) -> bool>,
    classifier: C,
    requests: P,
}

impl<C, P> fmt::Debug for RetryBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<C, P> RetryBuilder<C, P> {
    /// The `service` label of the metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Retries after the first attempt (3 attempts in all = `max_retries(2)`).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.config.max_retries = max_retries;
        self
    }

    /// Backoff between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff.initial = backoff.initial;
        self.config.backoff.multiplier = backoff.multiplier;
        self.config.backoff.max_delay = backoff.max_delay;
        self.config.backoff.jitter = backoff.jitter;
        self.config.backoff.seed = backoff.seed;
        self
    }

    /// The longest server pushback (`Retry-After`, `grpc-retry-pushback-ms`)
    /// waited for (default 5 minutes): a server asking for longer gets no
    /// retry, and the caller its answer at once. Pushback is never cut short.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.config.max_pushback = max;
        self
    }

    /// Share this budget (it may also be shared with other layers).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retry a failure only when `f` says so (e.g. not for
    /// `FailureKind::HttpStatus(501)`).
    pub fn retry_if(mut self, f: fn(&FailureKind) -> bool) -> Self {
        self.retry_if = Some(f);
        self
    }

    /// Which results are failures.
    pub fn classifier<C2>(self, classifier: C2) -> RetryBuilder<C2, P> {
        RetryBuilder {
            config: self.config,
            budget: self.budget,
            retry_if: self.retry_if,
            classifier,
            requests: self.requests,
        }
    }

    /// How requests are copied and pushback read: [`CloneRequests`] (default)
    /// or [`HttpRequests`].
    pub fn requests<P2>(self, requests: P2) -> RetryBuilder<C, P2> {
        RetryBuilder {
            config: self.config,
            budget: self.budget,
            retry_if: self.retry_if,
            classifier: self.classifier,
            requests,
        }
    }

    /// Shorthand for `.requests(HttpRequests::new())`.
    pub fn http(self) -> RetryBuilder<C, HttpRequests> {
        self.requests(HttpRequests::new())
    }

    /// Validate and build.
    pub fn build(self) -> Result<RetryLayer<C, P>, ConfigError> {
        self.config.validate()?;
        let budget = self.budget.or_else(|| self.config.budget());
        let backoff = self.config.backoff();
        Ok(RetryLayer {
            settings: Settings {
                max_retries: self.config.max_retries,
                classifier: self.classifier,
                requests: self.requests,
                common: Arc::new(Common::new(
                    self.config.name,
                    budget,
                    backoff,
                    self.config.max_pushback,
                    self.retry_if,
                )),
            },
        })
    }
}
