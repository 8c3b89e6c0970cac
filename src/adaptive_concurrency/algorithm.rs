//! The limit algorithms: Netflix's Gradient2 and AIMD. Pure arithmetic on
//! one sample at a time, tested without any service around it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The long-term RTT averages about this many samples (the EMA's factor
    /// is `2 / (long_window + 1)`). Default 600.
    pub long_window: u32,
    /// The headroom added at each sample (`queue_size` calls may queue
    /// beyond the estimated capacity). Default 4.
    pub queue_size: u32,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 { smoothing: 0.2, tolerance: 1.5, long_window: 600, queue_size: 4 }
    }
}

impl Gradient2 {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("adaptive_concurrency.gradient2.smoothing", self.smoothing, f64::MIN_POSITIVE, 1.0)?;
        check_range("adaptive_concurrency.gradient2.tolerance", self.tolerance, 1.0, 100.0)?;
        check_nonzero("adaptive_concurrency.gradient2.long_window", self.long_window == 0)
    }
}

/// AIMD (additive increase, multiplicative decrease), as Netflix's
/// `AIMDLimit`: the limit grows by `increase` for each call that succeeded
/// while at least half the limit was in use, and is multiplied by
/// `backoff_ratio` for each drop: a call the classifier calls a failure, or
/// one slower than `timeout`.
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
    /// Added to the limit on a success, in `(0, 1000]`. Default 1.
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
    /// From the call to its response.
    pub(crate) rtt: Duration,
    /// Calls in flight when this one started (itself included).
    pub(crate) in_flight: usize,
    /// The classifier called the result a failure.
    pub(crate) dropped: bool,
}

/// The samples needed before the long-term RTT is an EMA (until then, a
/// plain mean), as in Netflix's `ExpAvgMeasurement`.
const WARMUP: u32 = 10;

/// An algorithm and its running state.
#[derive(Clone, Debug)]
pub(crate) enum Algorithm {
    Gradient2 { cfg: Gradient2, long_rtt: f64, samples: u32 },
    Aimd(Aimd),
}

impl Algorithm {
    pub(crate) fn gradient2(cfg: Gradient2) -> Self {
        Algorithm::Gradient2 { cfg, long_rtt: 0.0, samples: 0 }
    }

    /// The long-term RTT estimate in seconds (Gradient2 only).
    pub(crate) fn long_rtt(&self) -> Option<f64> {
        match self {
            Algorithm::Gradient2 { samples: 1.., long_rtt, .. } => Some(*long_rtt),
            _ => None,
        }
    }

    /// The new limit after `sample`, within `[min, max]`.
    pub(crate) fn update(&mut self, limit: f64, sample: Sample, min: f64, max: f64) -> f64 {
        let new = match self {
            Algorithm::Gradient2 { cfg, long_rtt, samples } => {
                // A failed call's RTT says nothing about queueing (a fast
                // error would look like spare capacity): not a sample.
                if sample.dropped || sample.rtt.is_zero() {
                    return limit;
                }
                gradient2(cfg, long_rtt, samples, limit, sample)
            }
            Algorithm::Aimd(cfg) => {
                if sample.dropped || sample.rtt > cfg.timeout {
                    limit * cfg.backoff_ratio
                } else if sample.in_flight * 2 >= limit as usize {
                    limit + cfg.increase
                } else {
                    limit
                }
            }
        };
        new.clamp(min, max)
    }
}

/// Netflix's `Gradient2Limit._update`.
fn gradient2(cfg: &Gradient2, long_rtt: &mut f64, samples: &mut u32, limit: f64, sample: Sample) -> f64 {
    let short = sample.rtt.as_secs_f64();
    *samples = samples.saturating_add(1);
    if *samples <= WARMUP {
        *long_rtt += (short - *long_rtt) / f64::from(*samples);
    } else {
        *long_rtt += (short - *long_rtt) * 2.0 / (f64::from(cfg.long_window) + 1.0);
    }
    // Back from a long overload, the long-term RTT is far above the
    // latency now: bring it down faster than the EMA would.
    if *long_rtt / short > 2.0 {
        *long_rtt *= 0.95;
    }
    // Not using the limit (app-limited): no evidence to grow it.
    if (sample.in_flight as f64) < limit / 2.0 {
        return limit;
    }
    let gradient = (cfg.tolerance * *long_rtt / short).clamp(0.5, 1.0);
    let new = limit * gradient + f64::from(cfg.queue_size);
    limit * (1.0 - cfg.smoothing) + new * cfg.smoothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample { rtt: Duration::from_millis(ms), in_flight, dropped }
    }

    #[test]
    fn aimd_grows_by_one_when_the_window_is_used_and_backs_off_on_a_drop() {
        let mut a = Algorithm::Aimd(Aimd::default());
        assert_eq!(a.update(10.0, sample(5, 5, false), 1.0, 100.0), 11.0);
        // App-limited: less than half the limit in use.
        assert_eq!(a.update(10.0, sample(5, 4, false), 1.0, 100.0), 10.0);
        assert_eq!(a.update(10.0, sample(5, 5, true), 1.0, 100.0), 9.0);
        // Slower than the timeout is a drop too.
        assert_eq!(a.update(10.0, sample(6_000, 5, false), 1.0, 100.0), 9.0);
    }

    #[test]
    fn gradient2_shrinks_when_latency_rises_above_the_tolerance() {
        let mut g = Algorithm::gradient2(Gradient2::default());
        let mut limit = 50.0;
        for _ in 0..100 {
            limit = g.update(limit, sample(10, 50, false), 1.0, 1000.0);
        }
        // Steady latency: the limit grows by the queue size (smoothed).
        assert!(limit > 50.0, "{limit}");
        let before = limit;
        limit = g.update(limit, sample(30, limit as usize, false), 1.0, 1000.0);
        assert!(limit < before, "{limit} < {before}");
        assert!(g.long_rtt().unwrap() > 0.0099 && g.long_rtt().unwrap() < 0.011);
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
                Algorithm::Aimd(Aimd { timeout: Duration::from_millis(500), ..Aimd::default() })
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
