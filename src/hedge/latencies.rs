//! The latency histogram of the percentile delay: one window of counts,
//! closed (read and emptied) by the first answer after its end, recorded
//! into without a lock.
//!
//! The counts are log-linear buckets of microseconds: values below
//! 2^[`SUB_BITS`] have a bucket each, then every power of two is cut into
//! 2^`SUB_BITS` equal buckets, so a bucket is at most 1/32 of its values
//! wide and its midpoint is within 1.6 % of any of them (tower's `hedge`
//! counts whole milliseconds in an `hdrhistogram` under a lock). Recording
//! is one relaxed `fetch_add` on the value's bucket and one load of the
//! window's end.
//!
//! Closing a window: the answer that finds the window ended moves its end
//! with a compare-and-swap; the one that succeeds empties the buckets, each
//! with a `swap(0)`, and reads the percentile off the counts. An answer
//! recorded while that runs lands in either the closed window or the next
//! one, never in both and never in neither (the loom tests below check every
//! interleaving, `scripts/loom.sh`). The counts are copied into a scratch
//! buffer taken only by the closing answer, so no call allocates.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::Mutex;

/// Linear buckets per power of two: 2^`SUB_BITS` (tiny under loom, whose
/// models check every atomic operation).
const SUB_BITS: u32 = if cfg!(loom) { 1 } else { 5 };
/// Values are below 2^`MAX_POWER` µs (about 71 minutes); longer latencies
/// are counted as the longest.
const MAX_POWER: u32 = if cfg!(loom) { 3 } else { 32 };
/// The longest latency counted, in µs.
const MAX_MICROS: u64 = (1 << MAX_POWER) - 1;
const BUCKETS: usize = ((MAX_POWER + 1 - SUB_BITS) << SUB_BITS) as usize;

/// The bucket of `us` microseconds.
#[inline]
fn bucket(us: u64) -> usize {
    let us = us.min(MAX_MICROS);
    if us < 1 << SUB_BITS {
        return us as usize;
    }
    let shift = 63 - us.leading_zeros() - SUB_BITS;
    ((u64::from(shift) << SUB_BITS) + (us >> shift)) as usize
}

/// The value a bucket stands for: its midpoint.
fn midpoint(i: usize) -> u64 {
    let i = i as u64;
    if i < 1 << SUB_BITS {
        return i;
    }
    let shift = (i >> SUB_BITS) - 1;
    let low = ((i & ((1 << SUB_BITS) - 1)) | (1 << SUB_BITS)) << shift;
    low + ((1 << shift) >> 1)
}

/// A window that was closed: how many answers it held and their percentile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Closed {
    /// Answers counted in the window.
    pub(crate) count: u64,
    /// The percentile, in µs (0 when the window was empty).
    pub(crate) percentile: u64,
}

/// One window of latency counts; see the [module docs](self).
pub(crate) struct Latencies {
    percentile: f64,
    /// Window length, µs.
    len: u64,
    /// When the current window ends, in µs of the caller's clock.
    ends: AtomicU64,
    buckets: Box<[AtomicU64]>,
    /// The counts of the window being closed.
    scratch: Mutex<Box<[u64]>>,
}

impl Latencies {
    /// A first window from 0 to `len` µs; `percentile` is above 0 and at most 100.
    pub(crate) fn new(percentile: f64, len: u64) -> Self {
        Latencies {
            percentile,
            len,
            ends: AtomicU64::new(len),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            scratch: Mutex::new(vec![0; BUCKETS].into_boxed_slice()),
        }
    }

    /// An answer took `latency` µs and came at `now` µs: closes the window
    /// first when it ended (the answer then counts in the next one), and
    /// returns what it held.
    #[inline]
    pub(crate) fn record(&self, now: u64, latency: u64) -> Option<Closed> {
        let ends = self.ends.load(Ordering::Relaxed);
        let closed = if now >= ends { self.close(ends, now) } else { None };
        self.buckets[bucket(latency)].fetch_add(1, Ordering::Relaxed);
        closed
    }

    /// Close the window that ends at `ends`, unless another answer did.
    #[cold]
    fn close(&self, ends: u64, now: u64) -> Option<Closed> {
        let next = now.saturating_add(self.len);
        self.ends.compare_exchange(ends, next, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        let mut counts = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        for (count, bucket) in counts.iter_mut().zip(self.buckets.iter()) {
            *count = bucket.swap(0, Ordering::Relaxed);
        }
        Some(self.percentile_of(&counts))
    }

    /// hdrhistogram's rule: the value of the `ceil(p % of n)`-th answer.
    fn percentile_of(&self, counts: &[u64]) -> Closed {
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return Closed { count, percentile: 0 };
        }
        let rank = ((self.percentile / 100.0 * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        let i = counts.iter().position(|&c| {
            seen += c;
            seen >= rank
        });
        Closed { count, percentile: midpoint(i.expect("the rank is at most the count")) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut last = 0;
        for us in (0..5_000).chain([94_208, 95_000, 96_255, 96_256, MAX_MICROS - 1, MAX_MICROS, u64::MAX]) {
            let b = bucket(us);
            assert!(b >= last && b < BUCKETS, "{us} µs: bucket {b}");
            last = b;
            let mid = midpoint(b).min(MAX_MICROS) as f64;
            let us = us.min(MAX_MICROS) as f64;
            assert!((mid - us).abs() <= us / 32.0, "{us} µs read back as {mid}");
        }
        assert_eq!(bucket(MAX_MICROS), BUCKETS - 1);
        assert!((0..BUCKETS).all(|i| bucket(midpoint(i)) == i), "each midpoint is in its bucket");
    }

    #[test]
    fn p95_of_a_known_set_after_the_window_ends() {
        let l = Latencies::new(95.0, 1_000_000);
        // 1..=100 ms, in a scrambled order.
        for i in 0..100u64 {
            assert_eq!(l.record(i, (i * 37 % 100 + 1) * 1000), None, "the window has not ended");
        }
        let closed = l.record(1_000_000, 7).expect("the window ended");
        assert_eq!(closed.count, 100);
        assert!((94_000..=96_000).contains(&closed.percentile), "{closed:?}");
        // The closing answer counts in the next window, which ends 1 s after it.
        assert_eq!(l.record(1_999_999, 7), None);
        assert_eq!(l.record(2_000_000, 7), Some(Closed { count: 2, percentile: 7 }));
    }

    #[test]
    fn rotation_empties_the_window_and_a_silent_window_closes_empty() {
        let l = Latencies::new(50.0, 10);
        l.record(0, 1_000);
        l.record(1, 3_000);
        assert_eq!(l.record(10, 5), Some(Closed { count: 2, percentile: midpoint(bucket(1_000)) }));
        // Nothing answered between 20 and 100: the window that closes holds
        // only the answer that opened it.
        assert_eq!(l.record(100, 9), Some(Closed { count: 1, percentile: 5 }));
        assert_eq!(l.record(115, 9), Some(Closed { count: 1, percentile: 9 }));
        let empty = Latencies::new(50.0, 10);
        assert_eq!(empty.close(10, 10), Some(Closed { count: 0, percentile: 0 }));
    }

    #[test]
    fn percentiles_at_the_edges() {
        let l = Latencies::new(100.0, 10);
        for us in [3, 1, 2] {
            l.record(0, us);
        }
        assert_eq!(l.record(10, 0).map(|c| c.percentile), Some(3), "p100 is the largest");
        let l = Latencies::new(0.001, 10);
        for us in [3, 1, 2] {
            l.record(0, us);
        }
        assert_eq!(l.record(10, 0).map(|c| c.percentile), Some(1), "a tiny percentile is the smallest");
    }
}

/// Model-checked with loom (`scripts/loom.sh`): every interleaving of the
/// threads, up to `LOOM_MAX_PREEMPTIONS` preemptions each.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Answers recorded while another closes the window: each is counted in
    /// exactly one window, none lost, none twice.
    #[test]
    fn loom_an_answer_recorded_during_a_close_counts_once() {
        loom::model(|| {
            let l = Arc::new(Latencies::new(50.0, 10));
            l.record(0, 1);
            let recorders: Vec<_> = (0..2)
                .map(|i| {
                    let l = l.clone();
                    thread::spawn(move || l.record(5, 2 + i))
                })
                .collect();
            let closed = l.record(10, 7).expect("this answer ends the window");
            for r in recorders {
                assert_eq!(r.join().unwrap(), None, "the window ends at 10");
            }
            let next = l.record(20, 7).expect("the next window ends at 20");
            // The first answer and the recorders' are in one of the two; the
            // closing answer is in the next.
            assert_eq!(closed.count + next.count, 1 + 2 + 1, "every answer, once");
            assert!((1..=3).contains(&closed.count), "{closed:?}");
        });
    }

    /// Two answers find the window ended at once: one of them closes it,
    /// the other counts in the next window.
    #[test]
    fn loom_a_window_is_closed_once() {
        loom::model(|| {
            let l = Arc::new(Latencies::new(50.0, 10));
            l.record(0, 1);
            let other = {
                let l = l.clone();
                thread::spawn(move || l.record(10, 3))
            };
            let mine = l.record(10, 2);
            let theirs = other.join().unwrap();
            let closed = match (mine, theirs) {
                (Some(c), None) | (None, Some(c)) => c,
                both => panic!("closed {both:?}"),
            };
            // The closer's answer is in the next window; the other's in the
            // closed one (recorded before the close emptied its bucket) or in
            // the next one.
            let next = l.record(20, 7).expect("the next window ends at 20");
            assert_eq!(closed.count + next.count, 1 + 2);
            assert!((1..=2).contains(&closed.count), "{closed:?}");
        });
    }
}
