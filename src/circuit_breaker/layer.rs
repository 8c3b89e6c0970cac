//! The layer, its builder and the handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::{CircuitBreakerConfig, SlidingWindow};
use super::future::Stripes;
use super::state::{metric_labels, CircuitMetrics, CircuitState, Listener, Settings, Shared, StateChange};
use super::CircuitBreaker;
use crate::classify::{CancelPolicy, ResultClassifier};
use crate::config::ConfigError;

/// Layer applying a [`CircuitBreaker`]. Every service it makes, and every
/// clone of it, shares one breaker state.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
///
/// let breaker = CircuitBreakerLayer::builder()
///     .name("payments")
///     .failure_rate_threshold(50.0)
///     .count_window(10)
///     .minimum_calls(4)
///     .wait_in_open(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// let handle = breaker.handle();
/// let svc = ServiceBuilder::new().layer(breaker).service_fn(|fail: bool| async move {
///     if fail { Err("boom") } else { Ok("ok") }
/// });
///
/// for _ in 0..4 {
///     let _ = svc.clone().oneshot(true).await;
/// }
/// assert_eq!(handle.state(), CircuitState::Open);
/// let err = svc.clone().oneshot(false).await.unwrap_err();
/// let open = err.downcast_ref::<CircuitOpen>().unwrap();
/// assert!(open.retry_after().unwrap() <= Duration::from_secs(30));
/// # }
/// ```
pub struct CircuitBreakerLayer<C = ResultClassifier> {
    stripes: Arc<Stripes<C>>,
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer { stripes: self.stripes.clone() }
    }
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("shared", self.stripes.shared())
            .field("classifier", self.stripes.classifier())
            .finish()
    }
}

impl CircuitBreakerLayer {
    /// A builder, starting from [`CircuitBreakerConfig::default`].
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            config: CircuitBreakerConfig::default(),
            classifier: ResultClassifier,
            listeners: Vec::new(),
        }
    }

    /// A breaker from a configuration (validated), with the default classifier.
    pub fn from_config(config: &CircuitBreakerConfig) -> Result<Self, ConfigError> {
        CircuitBreakerBuilder { config: config.clone(), classifier: ResultClassifier, listeners: Vec::new() }.build()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The same breaker (same shared state) with another classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer { stripes: Arc::new(Stripes::new(self.stripes.shared().clone(), classifier)) }
    }

    /// A handle on the shared state: read it, transition it manually, read counters.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle { shared: self.stripes.shared().clone() }
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.stripes.clone())
    }
}

/// Builder of a [`CircuitBreakerLayer`]; see [`CircuitBreakerConfig`] for the defaults.
pub struct CircuitBreakerBuilder<C = ResultClassifier> {
    config: CircuitBreakerConfig,
    classifier: C,
    listeners: Vec<Listener>,
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl<C> CircuitBreakerBuilder<C> {
    /// Name (the `service` label of metrics and tracing events).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }
    /// Failure rate in percent at or above which the breaker opens.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }
    /// Slow-call rate in percent at or above which the breaker opens.
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }
    /// Calls at least this long are slow (turns slow-call detection on; it is
    /// off by default).
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.config.slow_call_duration = Some(d);
        self
    }
    /// Record every call's duration into the
    /// `tower_mesh_circuit_breaker_call_duration_seconds` histogram, at the
    /// cost of two clock reads per call (on anyway with slow-call detection).
    pub fn measure_call_durations(mut self, on: bool) -> Self {
        self.config.measure_call_durations = on;
        self
    }
    /// Count-based window over the last `n` calls.
    pub fn count_window(mut self, n: usize) -> Self {
        self.config.sliding_window = SlidingWindow::Count(n);
        self
    }
    /// Time-based window over the last `d` (whole seconds, one bucket per second).
    ///
    /// In a multi-thread tokio runtime the breaker arms one timer per second
    /// while calls succeed (to count them without reading the clock); a
    /// runtime built without timers works too (the clock is read instead),
    /// after the one panic message tokio prints when asked for a timer there
    /// — unless the program aborts on panic: build its runtime with timers.
    pub fn time_window(mut self, d: Duration) -> Self {
        self.config.sliding_window = SlidingWindow::Time(d);
        self
    }
    /// Calls needed in the window before rates are evaluated.
    pub fn minimum_calls(mut self, n: usize) -> Self {
        self.config.minimum_calls = n;
        self
    }
    /// Time in open before probing.
    pub fn wait_in_open(mut self, d: Duration) -> Self {
        self.config.wait_in_open = d;
        self
    }
    /// Grow the open wait by `multiplier` on each consecutive trip, capped at `max`.
    pub fn growing_wait_in_open(mut self, multiplier: f64, max: Duration) -> Self {
        self.config.wait_in_open_multiplier = multiplier;
        self.config.max_wait_in_open = max;
        self
    }
    /// Probe calls admitted in half-open.
    pub fn permitted_calls_in_half_open(mut self, n: usize) -> Self {
        self.config.permitted_calls_in_half_open = n;
        self
    }
    /// Longest time in half-open: probes that have not concluded by then
    /// re-open the breaker at that moment (default 60 s; zero: unlimited).
    ///
    /// Entering half-open in a tokio runtime spawns a task that makes the
    /// change on time. In a runtime built without timers the change is made
    /// when the breaker is next used or observed instead, after the one
    /// panic message tokio prints when asked for a timer there — unless the
    /// program aborts on panic: build its runtime with timers.
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.config.max_wait_in_half_open = d;
        self
    }
    /// Count the stack's own rejections from below (`BulkheadFull`,
    /// [`CircuitOpen`](super::CircuitOpen)) as failures when the classifier
    /// says they are (default false: ignored).
    pub fn count_rejections(mut self, on: bool) -> Self {
        self.config.count_rejections = on;
        self
    }
    /// How a dropped call is counted.
    pub fn cancel_policy(mut self, p: CancelPolicy) -> Self {
        self.config.cancel_policy = p;
        self
    }
    /// Call `f` on every state transition (outside the breaker's lock).
    pub fn on_state_change(mut self, f: impl Fn(&StateChange) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(f));
        self
    }
    /// The classifier deciding what a result counts as.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder { config: self.config, classifier, listeners: self.listeners }
    }
    /// One breaker per key of the request (e.g. the URI authority) instead of
    /// one for all calls; see [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer).
    /// Each key's breaker is named `name[key]` in logs and errors; its metrics
    /// carry the labels `service="name"` and a bounded `key` label (see
    /// [`metric_keys`](super::KeyedCircuitBreakerBuilder::metric_keys)). At
    /// most [`max_keys`](super::KeyedCircuitBreakerBuilder::max_keys) keys
    /// are kept.
    pub fn key<F>(self, key_fn: F) -> super::KeyedCircuitBreakerBuilder<F, C> {
        super::KeyedCircuitBreakerBuilder {
            config: self.config,
            classifier: self.classifier,
            listeners: self.listeners,
            key_fn,
            idle_ttl: Duration::from_secs(600),
            max_keys: super::keyed::DEFAULT_MAX_KEYS,
            labels: Default::default(),
        }
    }
    /// Validate and build.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        self.config.validate()?;
        let labels = metric_labels(&self.config.name, None);
        let shared =
            Shared::new(self.config.name.as_str().into(), labels, Settings::from_config(&self.config), self.listeners);
        Ok(CircuitBreakerLayer { stripes: Arc::new(Stripes::new(Arc::new(shared), self.classifier)) })
    }
}

/// A handle on a breaker's shared state (from [`CircuitBreakerLayer::handle`]).
#[derive(Clone, Debug)]
pub struct CircuitBreakerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl CircuitBreakerHandle {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// The current state. Open -> half-open happens lazily, on the next call
    /// after the wait, so this may still say `Open` after the wait elapsed.
    /// Half-open -> open at the end of `max_wait_in_half_open` happens on
    /// time: this says `Open` from that moment.
    pub fn state(&self) -> CircuitState {
        self.shared.observed_state()
    }
    /// When open: the rest of the wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.shared.retry_after()
    }
    /// A snapshot of the counters.
    pub fn metrics(&self) -> CircuitMetrics {
        self.shared.snapshot()
    }
    /// Close (resets the window).
    pub fn transition_to_closed(&self) {
        self.shared.manual(CircuitState::Closed, false)
    }
    /// Open (starts the open wait; counts as a trip for the growing wait).
    pub fn transition_to_open(&self) {
        self.shared.manual(CircuitState::Open, false)
    }
    /// Half-open (admits the probes).
    pub fn transition_to_half_open(&self) {
        self.shared.manual(CircuitState::HalfOpen, false)
    }
    /// Disable: admit and record nothing until another manual transition.
    pub fn transition_to_disabled(&self) {
        self.shared.manual(CircuitState::Disabled, false)
    }
    /// Force open: reject everything until another manual transition.
    pub fn transition_to_forced_open(&self) {
        self.shared.manual(CircuitState::ForcedOpen, false)
    }
    /// Metrics only: admit and record, never open.
    pub fn transition_to_metrics_only(&self) {
        self.shared.manual(CircuitState::MetricsOnly, false)
    }
    /// Back to a fresh closed breaker (window and growing wait reset).
    pub fn reset(&self) {
        self.shared.manual(CircuitState::Closed, true)
    }
}
