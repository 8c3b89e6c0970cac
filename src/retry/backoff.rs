use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a backoff delay is randomised (see the AWS Architecture Blog, "Exponential
/// Backoff And Jitter"). `d` is the exponential delay `initial × multiplier^n`
/// capped at `max_delay`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d]`: the best spread, the default.
    #[default]
    Full,
    /// `d/2 + uniform[0, d/2]`: never less than half the delay.
    Equal,
    /// `min(max_delay, uniform[initial, previous × 3])`: grows from the previous
    /// delay rather than from the attempt number (the first retry uses
    /// `previous = initial`, as in the AWS article).
    Decorrelated,
}

/// Exponential backoff with jitter.
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::retry::{Backoff, Jitter};
///
/// let b = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(1)).jitter(Jitter::None);
/// assert_eq!(b.delay(0, Duration::ZERO), Duration::from_millis(100));
/// assert_eq!(b.delay(2, Duration::ZERO), Duration::from_millis(400));
/// assert_eq!(b.delay(9, Duration::ZERO), Duration::from_secs(1)); // capped
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max_delay: Duration,
    pub(crate) jitter: Jitter,
}

impl Default for Backoff {
    /// 100 ms × 2.0 up to 10 s, full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))
    }
}

impl Backoff {
    /// `initial × multiplier^n`, at most `max_delay`, with [`Jitter::Full`].
    pub fn exponential(initial: Duration, multiplier: f64, max_delay: Duration) -> Self {
        Backoff { initial, multiplier, max_delay, jitter: Jitter::Full }
    }

    /// The same delay every time, without jitter.
    pub fn constant(delay: Duration) -> Self {
        Backoff { initial: delay, multiplier: 1.0, max_delay: delay, jitter: Jitter::None }
    }

    /// Use this jitter mode.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay (also the cap on server pushback).
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The delay before retry number `retry` (0 = the first retry); `previous`
    /// is the delay used before the last retry (for [`Jitter::Decorrelated`]).
    pub fn delay(&self, retry: u32, previous: Duration) -> Duration {
        let max = self.max_delay.as_secs_f64();
        let exp = (self.initial.as_secs_f64() * self.multiplier.powi(retry.min(1024) as i32)).min(max);
        let secs = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => fastrand::f64() * exp,
            Jitter::Equal => exp / 2.0 + fastrand::f64() * exp / 2.0,
            Jitter::Decorrelated => {
                // AWS starts from `sleep = base`: the first retry draws from [initial, 3 × initial].
                let lo = self.initial.as_secs_f64();
                let prev = if previous.is_zero() { lo } else { previous.as_secs_f64() };
                let hi = (prev * 3.0).max(lo);
                (lo + fastrand::f64() * (hi - lo)).min(max)
            }
        };
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(j: Jitter) -> Backoff {
        Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_millis(500)).jitter(j)
    }

    #[test]
    fn none_is_exact_and_capped() {
        let b = b(Jitter::None);
        let d: Vec<_> = (0..8).map(|n| b.delay(n, Duration::ZERO).as_millis()).collect();
        assert_eq!(d, [10, 20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(b.delay(u32::MAX, Duration::ZERO), Duration::from_millis(500));
        assert_eq!(Backoff::constant(Duration::from_millis(7)).delay(5, Duration::ZERO), Duration::from_millis(7));
    }

    proptest! {
        #[test]
        fn jitter_stays_in_bounds(retry in 0u32..40, prev_ms in 0u64..2000) {
            let prev = Duration::from_millis(prev_ms);
            let exp = b(Jitter::None).delay(retry, prev);
            let full = b(Jitter::Full).delay(retry, prev);
            prop_assert!(full <= exp);
            let equal = b(Jitter::Equal).delay(retry, prev);
            prop_assert!(equal >= exp / 2 && equal <= exp);
            let dec = b(Jitter::Decorrelated).delay(retry, prev);
            prop_assert!(dec <= Duration::from_millis(500));
            prop_assert!(dec >= Duration::from_millis(10).min(Duration::from_millis(500)));
            let base = if prev.is_zero() { Duration::from_millis(10) } else { prev };
            prop_assert!(dec <= (base * 3).max(Duration::from_millis(10)));
        }
    }

    #[test]
    fn full_jitter_spreads() {
        let b = b(Jitter::Full);
        let samples: Vec<_> = (0..200).map(|_| b.delay(3, Duration::ZERO)).collect();
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(*max - *min > Duration::from_millis(40), "{min:?}..{max:?}");
    }
}
