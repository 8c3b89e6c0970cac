use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::latencies::Latencies;

use crate::config::ConfigError;

/// When a hedge is sent: after a fixed delay, or after a percentile of the
/// latencies of recent calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// Always this long after the request (or the previous hedge) was sent.
    Fixed(Duration),
    /// The `percentile` (e.g. 95.0) of the latencies of the answers in the
    /// previous `window`; no hedge while that window held fewer than
    /// `min_samples` answers (at start-up, or when traffic is thin).
    Percentile {
        /// Percentile, above 0 and at most 100.
        percentile: f64,
        /// Answers the window must hold before its percentile is used.
        min_samples: u64,
        /// Length of a window: latencies are read from the previous full one
        /// (tower's rotating histogram).
        window: Duration,
    },
}

impl HedgeDelay {
    /// p`percentile` over 10 s windows, with at least 100 answers.
    pub fn percentile(percentile: f64) -> Self {
        HedgeDelay::Percentile { percentile, min_samples: 100, window: Duration::from_secs(10) }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let HedgeDelay::Percentile { percentile, window, .. } = *self {
            if !(percentile > 0.0 && percentile <= 100.0) {
                let field = "hedge.delay";
                return Err(ConfigError::OutOfRange { field, value: percentile, min: 0.0, max: 100.0 });
            }
            if window.is_zero() {
                return Err(ConfigError::Zero { field: "hedge.window" });
            }
        }
        Ok(())
    }
}

/// The hedge delay in force: fixed, or read from the latencies of the
/// previous window. The percentile is computed once per window, so a call
/// reads it with one atomic load; an answer is recorded without a lock
/// ([`Latencies`]).
pub(crate) struct Delay {
    mode: HedgeDelay,
    /// The delay in microseconds; 0: not known (too few samples).
    current: AtomicU64,
    window: Option<Window>,
}

struct Window {
    latencies: Latencies,
    min_samples: u64,
    /// The clock's zero for [`Latencies`], which counts in µs.
    epoch: Instant,
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay").field("mode", &self.mode).field("current", &self.current()).finish()
    }
}

impl Delay {
    pub(crate) fn new(mode: HedgeDelay) -> Self {
        let (current, window) = match mode {
            HedgeDelay::Fixed(d) => (micros(d).max(1), None),
            HedgeDelay::Percentile { percentile, min_samples, window } => {
                let latencies = Latencies::new(percentile, micros(window).max(1));
                (0, Some(Window { latencies, min_samples: min_samples.max(1), epoch: Instant::now() }))
            }
        };
        Delay { mode, current: AtomicU64::new(current), window }
    }

    /// The delay before a hedge, or `None` while it is not known.
    #[inline]
    pub(crate) fn current(&self) -> Option<Duration> {
        match self.current.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Whether answers' latencies are wanted.
    #[inline]
    pub(crate) fn records(&self) -> bool {
        self.window.is_some()
    }

    /// An answer came at `now`, `latency` after its request was sent (the
    /// caller's one clock read gives both). Returns the new delay when a
    /// window ended and changed it.
    #[inline]
    pub(crate) fn record(&self, latency: Duration, now: Instant) -> Option<Option<Duration>> {
        let w = self.window.as_ref()?;
        let at = micros(now.saturating_duration_since(w.epoch));
        let closed = w.latencies.record(at, micros(latency))?;
        let us = if closed.count >= w.min_samples { closed.percentile.max(1) } else { 0 };
        (self.current.swap(us, Ordering::Relaxed) != us).then(|| (us > 0).then(|| Duration::from_micros(us)))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
