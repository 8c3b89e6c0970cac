//! A breaker's settings as its state reads them, and its metric handles.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};

use super::window::Totals;
use crate::circuit_breaker::config::{CircuitBreakerConfig, SlidingWindow};
use crate::classify::CancelPolicy;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) failure_rate: f64,
    pub(crate) slow_rate: f64,
    /// `None`: slow-call detection off.
    pub(crate) slow_duration: Option<Duration>,
    /// Whether calls are timed (slow-call detection or the duration histogram).
    pub(crate) measure: bool,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) wait_in_open: Duration,
    pub(crate) wait_multiplier: f64,
    pub(crate) max_wait_in_open: Duration,
    pub(crate) permitted_in_half_open: u32,
    pub(crate) max_wait_in_half_open: Duration,
    pub(crate) cancel_policy: CancelPolicy,
    /// Count the stack's own rejections (`CircuitOpen`, `BulkheadFull`) from
    /// below as failures (default: ignored).
    pub(crate) count_rejections: bool,
}

impl Settings {
    pub(crate) fn from_config(c: &CircuitBreakerConfig) -> Self {
        let minimum_calls = match c.sliding_window {
            SlidingWindow::Count(n) => c.minimum_calls.min(n),
            SlidingWindow::Time(_) => c.minimum_calls,
        };
        Settings {
            failure_rate: c.failure_rate_threshold,
            slow_rate: c.slow_call_rate_threshold,
            slow_duration: c.slow_call_duration,
            measure: c.slow_call_duration.is_some() || c.measure_call_durations,
            window: c.sliding_window,
            minimum_calls: minimum_calls.min(u32::MAX as usize) as u32,
            wait_in_open: c.wait_in_open,
            wait_multiplier: c.wait_in_open_multiplier,
            max_wait_in_open: c.max_wait_in_open,
            permitted_in_half_open: c.permitted_calls_in_half_open.min(u32::MAX as usize) as u32,
            max_wait_in_half_open: c.max_wait_in_half_open,
            cancel_policy: c.cancel_policy,
            count_rejections: c.count_rejections,
        }
    }

    #[inline]
    pub(super) fn exceeded(&self, t: Totals) -> bool {
        // A healthy window (nothing failed, nothing slow) has both rates at
        // exactly 0: decide without the two divisions, with the same result.
        if t.failures == 0 && t.slow == 0 {
            return self.failure_rate <= 0.0 || self.slow_rate <= 0.0;
        }
        let (fr, sr) = t.rates();
        fr >= self.failure_rate || sr >= self.slow_rate
    }
}

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) ignored: Counter,
    pub(crate) rejected: Counter,
    pub(crate) slow: Counter,
    pub(crate) state: Gauge,
    pub(crate) duration: Histogram,
}

/// The labels of one breaker's metrics: `service`, and `key` for the breakers
/// of a keyed layer.
pub(crate) fn metric_labels(service: &str, key: Option<String>) -> Vec<Label> {
    let mut labels = vec![Label::new("service", service.to_owned())];
    if let Some(key) = key {
        labels.push(Label::new("key", key));
    }
    labels
}

pub(super) fn with_label(labels: &[Label], key: &'static str, value: &'static str) -> Vec<Label> {
    let mut v = labels.to_vec();
    v.push(Label::from_static_parts(key, value));
    v
}

impl Metrics {
    pub(super) fn new(labels: &[Label]) -> Self {
        let calls = |outcome| {
            metrics::counter!("tower_mesh_circuit_breaker_calls_total", with_label(labels, "outcome", outcome))
        };
        Metrics {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            rejected: calls("rejected"),
            slow: metrics::counter!("tower_mesh_circuit_breaker_slow_calls_total", labels.to_vec()),
            state: metrics::gauge!("tower_mesh_circuit_breaker_state", labels.to_vec()),
            duration: metrics::histogram!("tower_mesh_circuit_breaker_call_duration_seconds", labels.to_vec()),
        }
    }
}
