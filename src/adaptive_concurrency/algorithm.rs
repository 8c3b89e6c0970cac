//! The limit algorithms: Netflix's Gradient2 and AIMD. Pure arithmetic on
//! one sample at a time, tested without any service around it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{check_nonzero, check_range, ConfigError};

/// Gradient2, the default algorithm of Netflix's concurrency-limits: the
/// limit follows the ratio of the long-term RTT (an exponential moving
/// average) to the latest RTT. See the [module docs](super) for the formulas.
///
/// ```
/// use tower_mesh::adaptive_concurrency::Gradient2;
///
/// let g = Gradient2 { tolerance: 2.0, ..Gradient2::default() };
/// assert_eq!(g.smoothing, 0.2);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gradient2 {
    /// How much of the newly computed limit is taken at each sample (the rest
    /// is the old limit), in `(0, 1]`. Default 0.2.
    pub smoothing: f64,
    /// How much slower than the long-term RTT a sample may be before the
    /// limit comes down, at least 1. Default 1.5 (50 % slower).
    pub tolerance: f64,
    /// The long-term RTT averages about this many windows (the EMA's factor
    /// is `2 / (long_window + 1)`). Default 600.
    pub long_window: u32,
    /// The headroom added at each update (`queue_size` calls may queue
    /// beyond the estimated capacity). Default 4.
    pub queue_size: u32,
    /// The samples of this long a window (and at least
    /// `min_window_samples` of them) make one update, with their mean RTT
    /// and their largest number in flight — Netflix's `WindowedLimit`,
    /// Envoy's `concurrency_update_interval`. Default 100 ms (Envoy's).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The fewest samples in a window. Default 10 (Netflix's).
    pub min_window_samples: u32,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 {
            smoothing: 0.2,
            tolerance: 1.5,
            long_window: 600,
            queue_size: 4,
            window: Duration::from_millis(100),
            min_window_samples: 10,
        }
    }
}

impl Gradient2 {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("adaptive_concurrency.gradient2.smoothing", self.smoothing, f64::MIN_POSITIVE, 1.0)?;
        check_range("adaptive_concurrency.gradient2.tolerance", self.tolerance, 1.0, 100.0)?;
        check_nonzero("adaptive_concurrency.gradient2.long_window", self.long_window == 0)?;
        check_nonzero("adaptive_concurrency.gradient2.min_window_samples", self.min_window_samples == 0)
    }
}

/// AIMD (additive increase, multiplicative decrease), as TCP's congestion
/// avoidance and Netflix's `AIMDLimit`: the limit grows by `increase` per
/// window of `limit` calls that succeeded while at least half the limit was
/// in use, and is multiplied by `backoff_ratio` on a drop — a call the
/// classifier calls a failure, or one slower than `timeout` — at most once
/// per window: a drop of a call that started before the last decrease does
/// not decrease the limit again. See the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::adaptive_concurrency::Aimd;
///
/// let a = Aimd { timeout: Duration::from_millis(200), ..Aimd::default() };
/// assert_eq!(a.backoff_ratio, 0.9);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aimd {
    /// The factor applied to the limit on a drop, in `[0.5, 1)`. Default 0.9.
    pub backoff_ratio: f64,
    /// Added to the limit per window of `limit` successes (`increase / limit`
    /// per success), in `(0, 1000]`. Default 1.
    pub increase: f64,
    /// A call slower than this counts as a drop. Default 5 s (Netflix's).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd { backoff_ratio: 0.9, increase: 1.0, timeout: Duration::from_secs(5) }
    }
}

impl Aimd {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("adaptive_concurrency.aimd.backoff_ratio", self.backoff_ratio, 0.5, 0.999)?;
        check_range("adaptive_concurrency.aimd.increase", self.increase, f64::MIN_POSITIVE, 1000.0)?;
        check_nonzero("adaptive_concurrency.aimd.timeout", self.timeout.is_zero())
    }
}

/// One completed call, as the algorithms see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// When the call started.
    pub(crate) started: Instant,
    /// From the call to its response.
    pub(crate) rtt: Duration,
    /// Calls in flight when this one started (itself included).
    pub(crate) in_flight: usize,
    /// The classifier called the result a failure.
    pub(crate) dropped: bool,
}

/// The windows needed before the long-term RTT is an EMA (until then, a
/// plain mean), as in Netflix's `ExpAvgMeasurement`.
const WARMUP: u32 = 10;

/// An algorithm and its running state.
#[derive(Clone, Debug)]
pub(crate) enum Algorithm {
    Gradient2(Gradient2State),
    Aimd { cfg: Aimd, last_decrease: Option<Instant> },
}

/// Gradient2's running state.
#[derive(Clone, Debug)]
pub(crate) struct Gradient2State {
    cfg: Gradient2,
    /// Long-term RTT in seconds, and the windows it has seen.
    long_rtt: f64,
    windows: u32,
    /// The window being filled: start, sum of RTTs, count, most in flight.
    start: Option<Instant>,
    sum: f64,
    count: u32,
    max_in_flight: usize,
}

impl Algorithm {
    pub(crate) fn gradient2(cfg: Gradient2) -> Self {
        Algorithm::Gradient2(Gradient2State {
            cfg,
            long_rtt: 0.0,
            windows: 0,
            start: None,
            sum: 0.0,
            count: 0,
            max_in_flight: 0,
        })
    }

    pub(crate) fn aimd(cfg: Aimd) -> Self {
        Algorithm::Aimd { cfg, last_decrease: None }
    }

    /// The long-term RTT estimate in seconds (Gradient2 only).
    pub(crate) fn long_rtt(&self) -> Option<f64> {
        match self {
            Algorithm::Gradient2(g) if g.windows > 0 => Some(g.long_rtt),
            _ => None,
        }
    }

    /// The new limit after `sample`, within `[min, max]`.
    pub(crate) fn update(&mut self, limit: f64, sample: Sample, min: f64, max: f64) -> f64 {
        let new = match self {
            Algorithm::Gradient2(g) => match g.window(sample) {
                Some((rtt, in_flight)) => g.update(limit, rtt, in_flight),
                None => return limit,
            },
            Algorithm::Aimd { cfg, last_decrease } => aimd(cfg, last_decrease, limit, sample),
        };
        new.clamp(min, max)
    }
}

/// AIMD with one decrease per window: calls admitted before a decrease
/// report the overload that decrease answered.
fn aimd(cfg: &Aimd, last_decrease: &mut Option<Instant>, limit: f64, sample: Sample) -> f64 {
    if sample.dropped || sample.rtt > cfg.timeout {
        if last_decrease.is_some_and(|at| sample.started < at) {
            return limit;
        }
        *last_decrease = Some(sample.started + sample.rtt);
        limit * cfg.backoff_ratio
    } else if sample.in_flight * 2 >= limit as usize {
        limit + cfg.increase / limit
    } else {
        limit
    }
}

impl Gradient2State {
    /// Add a sample to the window; at the window's end, its mean RTT (in
    /// seconds) and most calls in flight.
    fn window(&mut self, sample: Sample) -> Option<(f64, usize)> {
        // A failed call's RTT says nothing about queueing (a fast error
        // would look like spare capacity): not a sample.
        if sample.dropped || sample.rtt.is_zero() {
            return None;
        }
        let end = sample.started + sample.rtt;
        let start = *self.start.get_or_insert(end);
        self.sum += sample.rtt.as_secs_f64();
        self.count += 1;
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        if end < start + self.cfg.window || self.count < self.cfg.min_window_samples {
            return None;
        }
        let out = (self.sum / f64::from(self.count), self.max_in_flight);
        (self.start, self.sum, self.count, self.max_in_flight) = (None, 0.0, 0, 0);
        Some(out)
    }

    /// Netflix's `Gradient2Limit._update`, once per window.
    fn update(&mut self, limit: f64, short: f64, in_flight: usize) -> f64 {
        let cfg = &self.cfg;
        self.windows = self.windows.saturating_add(1);
        if self.windows <= WARMUP {
            self.long_rtt += (short - self.long_rtt) / f64::from(self.windows);
        } else {
            self.long_rtt += (short - self.long_rtt) * 2.0 / (f64::from(cfg.long_window) + 1.0);
        }
        // Back from a long overload, the long-term RTT is far above the
        // latency now: bring it down faster than the EMA would.
        if self.long_rtt / short > 2.0 {
            self.long_rtt *= 0.95;
        }
        // Not using the limit (app-limited): no evidence to grow it.
        if (in_flight as f64) < limit / 2.0 {
            return limit;
        }
        let gradient = (cfg.tolerance * self.long_rtt / short).clamp(0.5, 1.0);
        let new = limit * gradient + f64::from(cfg.queue_size);
        limit * (1.0 - cfg.smoothing) + new * cfg.smoothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A call that started now (every call after the previous one's end).
    fn sample(ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample { started: Instant::now(), rtt: Duration::from_millis(ms), in_flight, dropped }
    }

    #[test]
    fn aimd_grows_by_one_per_window_when_it_is_used_and_backs_off_once_per_window() {
        let t0 = Instant::now();
        let at = |start_ms: u64, ms: u64, dropped: bool| Sample {
            started: t0 + Duration::from_millis(start_ms),
            rtt: Duration::from_millis(ms),
            in_flight: 5,
            dropped,
        };
        let mut a = Algorithm::aimd(Aimd::default());
        assert_eq!(a.update(10.0, at(0, 5, false), 1.0, 100.0), 10.1);
        // App-limited: less than half the limit in use.
        assert_eq!(a.update(10.0, sample(5, 4, false), 1.0, 100.0), 10.0);
        // A drop ending at 15 ms decreases the limit ...
        assert_eq!(a.update(10.0, at(10, 5, true), 1.0, 100.0), 9.0);
        // ... a call that started before that: no second decrease ...
        assert_eq!(a.update(9.0, at(12, 5, true), 1.0, 100.0), 9.0);
        // ... one that started after it, slower than the timeout, is a drop.
        assert_eq!(a.update(10.0, at(20, 6_000, false), 1.0, 100.0), 9.0);
    }

    #[test]
    fn gradient2_updates_per_window_and_shrinks_when_latency_rises_above_the_tolerance() {
        let t0 = Instant::now();
        // Calls of `ms` ending every 10 ms from `at_ms` on, 10 per 100 ms window.
        let at = |at_ms: u64, ms: u64, in_flight: usize| Sample {
            started: t0 + Duration::from_millis(at_ms) - Duration::from_millis(ms),
            rtt: Duration::from_millis(ms),
            in_flight,
            dropped: false,
        };
        let mut g = Algorithm::gradient2(Gradient2::default());
        let mut limit = 50.0;
        for i in 0..9 {
            limit = g.update(limit, at(100 + i * 10, 10, 50), 1.0, 1000.0);
        }
        assert_eq!((limit, g.long_rtt()), (50.0, None), "not a full window yet");
        let mut t = 190;
        for _ in 0..200 {
            limit = g.update(limit, at(t, 10, 50), 1.0, 1000.0);
            t += 10;
        }
        // Steady latency: the limit grows by the queue size (smoothed) per window.
        assert!(limit > 50.0 && limit < 50.0 + 21.0 * 0.8, "{limit}");
        let long = g.long_rtt().unwrap();
        assert!(long > 0.0099 && long < 0.0101, "{long}");
        let before = limit;
        for _ in 0..20 {
            limit = g.update(limit, at(t, 30, limit as usize), 1.0, 1000.0);
            t += 10;
        }
        assert!(limit < before, "{limit} < {before}");
    }

    #[test]
    fn gradient2_ignores_drops() {
        let mut g = Algorithm::gradient2(Gradient2::default());
        assert_eq!(g.update(20.0, sample(1, 20, true), 1.0, 100.0), 20.0);
        assert_eq!(g.long_rtt(), None);
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_min_and_max(
            aimd in any::<bool>(),
            min in 1u32..50,
            span in 0u32..200,
            samples in proptest::collection::vec((0u64..10_000, 0usize..400, any::<bool>()), 1..200),
        ) {
            let (min, max) = (f64::from(min), f64::from(min + span));
            let mut alg = if aimd {
                Algorithm::aimd(Aimd { timeout: Duration::from_millis(500), ..Aimd::default() })
            } else {
                Algorithm::gradient2(Gradient2::default())
            };
            let mut limit = min;
            for (ms, in_flight, dropped) in samples {
                limit = alg.update(limit, sample(ms, in_flight, dropped), min, max);
                prop_assert!(limit >= min && limit <= max, "{} not in [{}, {}]", limit, min, max);
            }
        }
    }
}
