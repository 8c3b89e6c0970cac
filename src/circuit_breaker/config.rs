//! Serde configuration and validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::CancelPolicy;
use crate::config::{check_nonzero, check_range, ConfigError};

/// The sliding window the closed state evaluates rates over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlidingWindow {
    /// The last `n` calls (resilience4j `COUNT_BASED`).
    Count(usize),
    /// The calls of the last whole seconds (resilience4j `TIME_BASED`), kept
    /// as one bucket per second; rounded up to whole seconds.
    Time(#[serde(with = "humantime_serde")] Duration),
}

impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow::Count(100)
    }
}

/// Circuit breaker configuration (see the [module docs](super) for the
/// semantics and the resilience4j names).
///
/// ```
/// let cfg: tower_mesh::circuit_breaker::CircuitBreakerConfig = serde_json::from_str(r#"{
///     "name": "payments",
///     "failure_rate_threshold": 25.0,
///     "sliding_window": { "time": "30s" },
///     "wait_in_open": "10s"
/// }"#).unwrap();
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Name, used as the `service` label of metrics and tracing events
    /// (default `circuit_breaker`).
    pub name: String,
    /// Failure rate, in percent, at or above which the breaker opens (default 50).
    pub failure_rate_threshold: f64,
    /// Slow-call rate, in percent, at or above which the breaker opens (default 100).
    pub slow_call_rate_threshold: f64,
    /// Calls at least this long are slow (default: none, slow-call detection
    /// off — as in tower-resilience; resilience4j's default of 60 s at a 100 %
    /// rate only trips when every call in the window takes a minute).
    ///
    /// Measuring durations costs two clock reads per call, so the breaker only
    /// measures them when this is set or [`measure_call_durations`](Self::measure_call_durations) is on.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Option<Duration>,
    /// Record every call's duration into the
    /// `tower_mesh_circuit_breaker_call_duration_seconds` histogram (default
    /// false; always on when `slow_call_duration` is set).
    pub measure_call_durations: bool,
    /// The sliding window (default: the last 100 calls).
    pub sliding_window: SlidingWindow,
    /// Calls the window must hold before rates are evaluated (default 100).
    /// For a count window, a larger value is clamped to the window size (as
    /// resilience4j does); for a time window it is used as is.
    pub minimum_calls: usize,
    /// How long the breaker stays open before admitting probes (default 60 s).
    #[serde(with = "humantime_serde")]
    pub wait_in_open: Duration,
    /// Factor the open wait grows by on each consecutive trip without a close
    /// in between (default 1.0 = constant).
    pub wait_in_open_multiplier: f64,
    /// Cap of the growing open wait (default 0 = no cap beyond `wait_in_open * multiplier^n`).
    #[serde(with = "humantime_serde")]
    pub max_wait_in_open: Duration,
    /// Probe calls admitted in half-open (default 10).
    pub permitted_calls_in_half_open: usize,
    /// Longest time in half-open: if the probes have not concluded by then
    /// (a probe streaming a long response holds its slot until the body
    /// ends), the breaker re-opens at that moment and the open wait starts
    /// from it (default 60 s; 0 = unlimited, as in resilience4j).
    #[serde(with = "humantime_serde")]
    pub max_wait_in_half_open: Duration,
    /// How a call whose future was dropped is counted (default: ignored).
    pub cancel_policy: CancelPolicy,
    /// Count the stack's own rejections coming from below — a full
    /// bulkhead's `BulkheadFull`, another breaker's [`CircuitOpen`](super::CircuitOpen),
    /// found anywhere in the error's source chain — as failures, when the
    /// classifier says they are (default false: they are ignored, being this
    /// process's load rather than the dependency's failures).
    pub count_rejections: bool,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            name: "circuit_breaker".to_owned(),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: None,
            measure_call_durations: false,
            sliding_window: SlidingWindow::default(),
            minimum_calls: 100,
            wait_in_open: Duration::from_secs(60),
            wait_in_open_multiplier: 1.0,
            max_wait_in_open: Duration::ZERO,
            permitted_calls_in_half_open: 10,
            max_wait_in_half_open: Duration::from_secs(60),
            cancel_policy: CancelPolicy::Ignore,
            count_rejections: false,
        }
    }
}

impl CircuitBreakerConfig {
    /// Check every value; the builder and `from_config` call this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("circuit_breaker.failure_rate_threshold", self.failure_rate_threshold, 0.0, 100.0)?;
        check_range("circuit_breaker.slow_call_rate_threshold", self.slow_call_rate_threshold, 0.0, 100.0)?;
        match self.sliding_window {
            SlidingWindow::Count(n) => check_nonzero("circuit_breaker.sliding_window", n == 0)?,
            SlidingWindow::Time(d) => {
                check_nonzero("circuit_breaker.sliding_window", d.is_zero())?;
                check_range("circuit_breaker.sliding_window", d.as_secs_f64(), 0.0, 86_400.0)?;
            }
        }
        check_nonzero("circuit_breaker.minimum_calls", self.minimum_calls == 0)?;
        check_nonzero("circuit_breaker.permitted_calls_in_half_open", self.permitted_calls_in_half_open == 0)?;
        check_range("circuit_breaker.wait_in_open_multiplier", self.wait_in_open_multiplier, 1.0, 1000.0)?;
        if !self.max_wait_in_open.is_zero() && self.max_wait_in_open < self.wait_in_open {
            return Err(ConfigError::Conflict {
                field: "circuit_breaker.max_wait_in_open",
                other: "circuit_breaker.wait_in_open",
                reason: "the cap is shorter than the initial wait",
            });
        }
        Ok(())
    }
}
