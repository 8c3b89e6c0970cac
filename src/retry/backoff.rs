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
/// [`Backoff::none`] retries at once; [`Backoff::seed`] makes the jitter a
/// fixed sequence (for tests); [`Backoff::delay_with`] takes the random
/// numbers from the caller.
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
    pub(crate) seed: Option<u64>,
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
        Backoff { initial, multiplier, max_delay, jitter: Jitter::Full, seed: None }
    }

    /// The same delay every time, without jitter (`Duration::ZERO` is
    /// [`Backoff::none`]).
    pub fn constant(delay: Duration) -> Self {
        Backoff { initial: delay, multiplier: 1.0, max_delay: delay, jitter: Jitter::None, seed: None }
    }

    /// No delay: a retry is sent as soon as the service is ready. Server
    /// pushback (`Retry-After`, `grpc-retry-pushback-ms`) is still honoured.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_mesh::retry::Backoff;
    ///
    /// assert_eq!(Backoff::none().delay(3, Duration::ZERO), Duration::ZERO);
    /// ```
    pub fn none() -> Self {
        Backoff::constant(Duration::ZERO)
    }

    /// Draw the jitter of a retry layer built with this backoff from a
    /// random number generator seeded with `seed`, shared by the layer's
    /// services: the same calls failing in the same order get the same
    /// delays, run after run. Without it the jitter comes from a
    /// thread-local generator seeded at random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
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

    /// The longest delay of the backoff (server pushback is honoured even
    /// when longer).
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The seed of the jitter, if [seeded](Backoff::seed).
    pub fn seed_value(&self) -> Option<u64> {
        self.seed
    }

    /// The delay before retry number `retry` (0 = the first retry); `previous`
    /// is the delay used before the last retry (for [`Jitter::Decorrelated`]).
    /// The jitter comes from a thread-local generator (the seed is used by
    /// the retry layer, not here): see [`delay_with`](Backoff::delay_with).
    pub fn delay(&self, retry: u32, previous: Duration) -> Duration {
        self.delay_with(retry, previous, fastrand::f64)
    }

    /// Like [`delay`](Backoff::delay), with the jitter's random numbers (uniform
    /// in `[0, 1)`) drawn from `unit`: a seeded generator or a fixed
    /// sequence. Values outside `[0, 1]` are clamped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_mesh::retry::{Backoff, Jitter};
    ///
    /// let b = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(1)).jitter(Jitter::Full);
    /// assert_eq!(b.delay_with(1, Duration::ZERO, || 0.5), Duration::from_millis(100));
    /// let mut rng = fastrand::Rng::with_seed(7);
    /// let first = b.delay_with(1, Duration::ZERO, || rng.f64());
    /// let mut rng = fastrand::Rng::with_seed(7);
    /// assert_eq!(b.delay_with(1, Duration::ZERO, || rng.f64()), first);
    /// ```
    pub fn delay_with(&self, retry: u32, previous: Duration, mut unit: impl FnMut() -> f64) -> Duration {
        if self.max_delay.is_zero() {
            return Duration::ZERO;
        }
        let mut unit = move || {
            let u = unit();
            if u.is_nan() {
                0.0
            } else {
                u.clamp(0.0, 1.0)
            }
        };
        let max = self.max_delay.as_secs_f64();
        let exp = (self.initial.as_secs_f64() * self.multiplier.powi(retry.min(1024) as i32)).min(max);
        let secs = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => unit() * exp,
            Jitter::Equal => exp / 2.0 + unit() * exp / 2.0,
            Jitter::Decorrelated => {
                // AWS starts from `sleep = base`: the first retry draws from [initial, 3 × initial].
                let lo = self.initial.as_secs_f64();
                let prev = if previous.is_zero() { lo } else { previous.as_secs_f64() };
                let hi = (prev * 3.0).max(lo);
                (lo + unit() * (hi - lo)).min(max)
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
    fn none_is_zero_whatever_the_jitter() {
        for j in [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let b = Backoff::none().jitter(j);
            assert_eq!(b.delay(0, Duration::ZERO), Duration::ZERO, "{j:?}");
            assert_eq!(b.delay(7, Duration::from_secs(1)), Duration::ZERO, "{j:?}");
        }
        assert_eq!(Backoff::constant(Duration::ZERO), Backoff::none());
    }

    #[test]
    fn injected_numbers_give_exact_delays() {
        let e = b(Jitter::Equal);
        let b = b(Jitter::Full);
        assert_eq!(b.delay_with(2, Duration::ZERO, || 0.0), Duration::ZERO);
        assert_eq!(b.delay_with(2, Duration::ZERO, || 1.0), Duration::from_millis(40));
        assert_eq!(b.delay_with(2, Duration::ZERO, || 0.25), Duration::from_millis(10));
        assert_eq!(b.delay_with(2, Duration::ZERO, || 7.0), Duration::from_millis(40), "clamped");
        assert_eq!(b.delay_with(2, Duration::ZERO, || f64::NAN), Duration::ZERO, "NaN is 0");
        assert_eq!(e.delay_with(2, Duration::ZERO, || 0.5), Duration::from_millis(30));
        let mut a = fastrand::Rng::with_seed(42);
        let mut c = fastrand::Rng::with_seed(42);
        let first: Vec<_> = (0..10).map(|n| b.delay_with(n, Duration::ZERO, || a.f64())).collect();
        let again: Vec<_> = (0..10).map(|n| b.delay_with(n, Duration::ZERO, || c.f64())).collect();
        assert_eq!(first, again, "a seeded generator repeats its delays");
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
