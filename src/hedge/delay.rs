use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

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

/// Longest latency recorded, in microseconds (an hour); longer ones are
/// recorded as this.
const MAX_MICROS: u64 = 3_600_000_000;

/// The hedge delay in force: fixed, or read from the latencies of the
/// previous window. The percentile is computed once per window, so a call
/// reads it with one atomic load.
pub(crate) struct Delay {
    mode: HedgeDelay,
    /// The delay in microseconds; 0: not known (too few samples).
    current: AtomicU64,
    window: Option<Mutex<Window>>,
}

struct Window {
    hist: Histogram<u64>,
    started: Instant,
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
            HedgeDelay::Percentile { .. } => {
                // Fixed bounds: recording never allocates.
                let hist = Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds");
                (0, Some(Mutex::new(Window { hist, started: Instant::now() })))
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

    /// An answer came `latency` after its request was sent. Returns the new
    /// delay when a window ended and changed it.
    pub(crate) fn record(&self, latency: Duration) -> Option<Option<Duration>> {
        let (Some(window), HedgeDelay::Percentile { percentile, min_samples, window: len }) = (&self.window, self.mode)
        else {
            return None;
        };
        let now = Instant::now();
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = None;
        if now.saturating_duration_since(w.started) >= len {
            let us = if w.hist.len() >= min_samples.max(1) { w.hist.value_at_percentile(percentile).max(1) } else { 0 };
            if self.current.swap(us, Ordering::Relaxed) != us {
                changed = Some((us > 0).then(|| Duration::from_micros(us)));
            }
            w.hist.reset();
            w.started = now;
        }
        w.hist.saturating_record(micros(latency).clamp(1, MAX_MICROS));
        changed
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
