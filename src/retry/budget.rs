use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Fixed-point scale: one retry costs `SCALE` units and each request deposits
/// `ratio × SCALE`, so ratios are exact to six decimal places.
const SCALE: i64 = 1_000_000;
/// The window is kept in this many time slots; a slot's deposits and
/// withdrawals expire together, `ttl` after the slot began.
const SLOTS: usize = 10;

/// A retry budget shared by every clone of a retry layer: retries may be at most
/// `ratio` of the requests seen in the last `ttl`, plus `min_per_second × ttl`
/// that are always available (so a quiet service can still retry).
///
/// Like Finagle's and tower's `TpsBudget`, but exact for fractional ratios:
/// tower converts the ratio to an integer number of deposits per retry
/// (`(1.0 / ratio) as isize`), so a ratio of 0.4 allows 0.5 and 0.3 allows
/// 0.33; here each request deposits `ratio` in fixed point.
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::retry::RetryBudget;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.4);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// // A token is given back if dropped unspent (a cancelled retry), so spend it.
/// let granted = (0..10).filter_map(|_| budget.withdraw()).map(|t| t.spend()).count();
/// assert_eq!(granted, 4);
/// # });
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    deposit: i64,
    reserve: i64,
    slot_len: Duration,
    ttl: Duration,
    ratio: f64,
    min_per_second: u32,
    state: Mutex<Slots>,
}

struct Slots {
    start: Instant,
    /// Index of the slot that began at `start` + `epoch × slot_len`.
    epoch: u64,
    values: [i64; SLOTS],
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.inner.ttl)
            .field("min_per_second", &self.inner.min_per_second)
            .field("ratio", &self.inner.ratio)
            .field("balance", &self.balance())
            .finish()
    }
}

impl RetryBudget {
    /// A budget over `ttl` (clamped to 1 s – 60 s), with `min_per_second`
    /// retries always allowed and `ratio` retries per request on top (clamped
    /// to 0 – 1000). Use [`RetryConfig`](super::RetryConfig) for validated values.
    pub fn new(ttl: Duration, min_per_second: u32, ratio: f64) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_finite() { ratio.clamp(0.0, 1000.0) } else { 0.0 };
        let reserve = i64::from(min_per_second) * ttl.as_millis() as i64 / 1000 * SCALE;
        RetryBudget {
            inner: Arc::new(Inner {
                deposit: (ratio * SCALE as f64).round() as i64,
                reserve,
                slot_len: ttl / SLOTS as u32,
                ttl,
                ratio,
                min_per_second,
                state: Mutex::new(Slots { start: Instant::now(), epoch: 0, values: [0; SLOTS] }),
            }),
        }
    }

    fn with_slots<R>(&self, f: impl FnOnce(&mut Slots, usize) -> R) -> R {
        self.with_slots_at(Instant::now(), f)
    }

    fn with_slots_at<R>(&self, now: Instant, f: impl FnOnce(&mut Slots, usize) -> R) -> R {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = (now.saturating_duration_since(s.start).as_nanos() / self.inner.slot_len.as_nanos()) as u64;
        // Expire the slots that lie more than `ttl` back: at most SLOTS of them.
        let stale = epoch.saturating_sub(s.epoch).min(SLOTS as u64);
        for i in 1..=stale {
            let idx = ((s.epoch + i) % SLOTS as u64) as usize;
            s.values[idx] = 0;
        }
        s.epoch = s.epoch.max(epoch);
        let idx = (s.epoch % SLOTS as u64) as usize;
        f(&mut s, idx)
    }

    /// Record a request (not a retry): adds `ratio` of a retry to the budget.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// [`deposit`](Self::deposit) with a clock read the caller made anyway
    /// (the hedge layer's, which also times the call).
    pub(crate) fn deposit_at(&self, now: Instant) {
        if self.inner.deposit == 0 {
            return;
        }
        let amount = self.inner.deposit;
        self.with_slots_at(now, |s, idx| s.values[idx] += amount);
    }

    /// Take one retry from the budget, or `None` when it is spent. The returned
    /// token gives the retry back if it is dropped before [`BudgetToken::spend`]
    /// (the call was cancelled before the retry was sent).
    pub fn withdraw(&self) -> Option<BudgetToken> {
        let reserve = self.inner.reserve;
        let ok = self.with_slots(|s, idx| {
            let balance: i64 = s.values.iter().sum::<i64>() + reserve;
            if balance >= SCALE {
                s.values[idx] -= SCALE;
                true
            } else {
                false
            }
        });
        ok.then(|| BudgetToken { budget: Some(self.clone()) })
    }

    /// Retries currently available (fractional).
    pub fn balance(&self) -> f64 {
        let reserve = self.inner.reserve;
        let units = self.with_slots(|s, _| s.values.iter().sum::<i64>() + reserve);
        units as f64 / SCALE as f64
    }

    fn refund(&self) {
        self.with_slots(|s, idx| s.values[idx] += SCALE);
    }
}

/// One retry taken from a [`RetryBudget`]; returned to it on drop unless spent.
#[derive(Debug)]
pub struct BudgetToken {
    budget: Option<RetryBudget>,
}

impl BudgetToken {
    /// The retry was sent: the token is used up.
    pub fn spend(mut self) {
        self.budget = None;
    }
}

impl Drop for BudgetToken {
    fn drop(&mut self) {
        if let Some(b) = self.budget.take() {
            b.refund();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
    }

    fn granted(budget: &RetryBudget, tries: usize) -> usize {
        (0..tries).filter_map(|_| budget.withdraw().map(BudgetToken::spend)).count()
    }

    proptest! {
        /// Over N requests with ratio r (no reserve), exactly floor(N × r)
        /// retries are granted — for ratios where tower's integer conversion
        /// is off (0.3, 0.4, 0.25 ...).
        #[test]
        fn fractional_ratios_are_exact(requests in 0usize..2000, ratio_milli in 0u32..=1000) {
            rt().block_on(async {
                let ratio = f64::from(ratio_milli) / 1000.0;
                let b = RetryBudget::new(Duration::from_secs(10), 0, ratio);
                for _ in 0..requests { b.deposit(); }
                let expected = (requests as u64 * u64::from(ratio_milli) / 1000) as usize;
                assert_eq!(granted(&b, requests + 10), expected);
            });
        }
    }

    #[test]
    fn tower_tps_budget_rounds_ratios_wrongly_and_we_do_not() {
        rt().block_on(async {
            // tower's TpsBudget with 40 %: withdraw amount (1/0.4) as isize = 2 → 50 %.
            let tower = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 0, 0.4);
            use tower::retry::budget::Budget;
            for _ in 0..100 {
                tower.deposit();
            }
            let tower_granted = (0..100).filter(|_| tower.withdraw()).count();
            assert_eq!(tower_granted, 50, "tower grants 50 % for a 40 % ratio");

            let ours = RetryBudget::new(Duration::from_secs(10), 0, 0.4);
            for _ in 0..100 {
                ours.deposit();
            }
            assert_eq!(granted(&ours, 100), 40);

            // More ratios: tower grants 1 / floor(1 / r) of the requests.
            for (ratio, tower_expected, ours_expected) in [(0.3, 33, 30), (0.7, 100, 70), (0.25, 25, 25)] {
                let tower = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 0, ratio);
                let ours = RetryBudget::new(Duration::from_secs(10), 0, f64::from(ratio));
                for _ in 0..100 {
                    tower.deposit();
                    ours.deposit();
                }
                assert_eq!((0..100).filter(|_| tower.withdraw()).count(), tower_expected, "tower, ratio {ratio}");
                assert_eq!(granted(&ours, 100), ours_expected, "ours, ratio {ratio}");
            }

            // With a reserve: floor(N × r) + min_per_second × ttl.
            let ours = RetryBudget::new(Duration::from_secs(10), 1, 0.3);
            for _ in 0..55 {
                ours.deposit();
            }
            assert_eq!(granted(&ours, 100), 16 + 10);
        });
    }

    #[test]
    fn reserve_and_expiry() {
        rt().block_on(async {
            let b = RetryBudget::new(Duration::from_secs(10), 2, 0.0);
            assert_eq!(granted(&b, 100), 20, "min_per_second × ttl");
            let b = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
            for _ in 0..5 {
                b.deposit();
            }
            tokio::time::advance(Duration::from_secs(11)).await;
            assert_eq!(granted(&b, 10), 0, "deposits expire after ttl");
            for _ in 0..3 {
                b.deposit();
            }
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(granted(&b, 10), 3, "deposits inside ttl count");
        });
    }

    #[test]
    fn shared_across_clones_and_dropped_tokens_come_back() {
        rt().block_on(async {
            let a = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
            let b = a.clone();
            for _ in 0..4 {
                a.deposit();
            }
            let t1 = b.withdraw().expect("1st");
            let t2 = a.withdraw().expect("2nd");
            assert!(b.withdraw().is_none());
            t1.spend();
            drop(t2); // cancelled before the retry was sent
            a.withdraw().expect("the dropped token came back").spend();
            assert!(a.balance().abs() < 1e-9);
        });
    }
}
