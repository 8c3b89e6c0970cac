//! The lock-free success path of time windows, and the timer that closes it
//! at the end of its second so that successes need no clock read.
//!
//! A time window counts a success of a clean window (no failure, no slow
//! call) without the lock, in [`FastPath`]: one word holding the window's
//! current second and a count. A success belongs to the second it ends in,
//! so the path must stop counting when that second is over. Two ways to know:
//!
//! - read the clock on every success and compare seconds (what a breaker
//!   outside a tokio runtime does);
//! - or have a tokio timer close the path when the second ends, so a success
//!   reads no clock at all. The timer's waker ([`FastPath`] itself) runs in
//!   the timer driver when the timer fires and only clears the word's
//!   [`GUARD`] bit. The next success then finds an unguarded word of a past
//!   second and takes the locked path, which folds the count into its
//!   second's bucket and opens the path for the current second again (and
//!   re-arms the timer).
//!
//! Timers guard seconds only in a multi-thread runtime, whose idle workers
//! turn the timer driver whether or not the calls come from its tasks. A
//! current-thread runtime turns it only while something runs `block_on` on
//! it, and not before the future's first poll (a call answered at once would
//! not see the timer of a second long over), so there — and in a paused
//! clock's tests, which need one — successes read the clock, which follows a
//! paused clock exactly.
//!
//! As a safety net, a guarded success still reads the clock once every
//! [`CHECK_EVERY`] counts (a runtime so busy that its timer driver is not
//! turned cannot keep an old second open for long).
//!
//! The word's atomics are loom's under `cfg(loom)`: the loom tests below
//! check every interleaving of successes, the locked path closing and
//! reopening the word, and the timer unguarding it (`scripts/loom.sh`).

use std::future::Future as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::runtime::{Handle, Id, RuntimeFlavor};
use tokio::time::{Instant, Sleep};

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};

/// Bits of the word that hold the count (the rest hold the second and [`GUARD`]).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Set while a timer will clear it at the end of the word's second: a
/// success then need not read the clock to know its second is current.
const GUARD: u64 = 1 << 63;
/// The path is closed: no second matches.
const CLOSED: u64 = u64::MAX;
/// Seconds from which the path stays closed (about 2^39 s, never reached;
/// keeps an open word distinct from [`CLOSED`]).
pub(crate) const MAX_SEC: u64 = (1 << (63 - COUNT_BITS)) - 1;
/// A guarded success reads the clock when the count it makes is a multiple of this.
const CHECK_EVERY: u64 = 256;

/// The lock-free success count of a time window: `second << COUNT_BITS |
/// count`, with [`GUARD`] while a timer guards the second, or [`CLOSED`].
///
/// It is also the waker of that timer.
#[derive(Debug)]
pub(crate) struct FastPath {
    word: AtomicU64,
    /// The second whose end the armed timer marks.
    guarded: AtomicU64,
}

impl FastPath {
    pub(crate) fn new() -> Self {
        FastPath { word: AtomicU64::new(CLOSED), guarded: AtomicU64::new(CLOSED) }
    }

    /// Count one success of the window's current second without the lock:
    /// `false` when the path is closed, open for another second, or
    /// contended (the caller then records under the lock). `now` is read
    /// only if not given and the word is not guarded (or at a check).
    #[inline]
    pub(crate) fn count(&self, base: Instant, now: Option<Instant>) -> bool {
        let cur = self.word.load(Ordering::Acquire);
        if cur == CLOSED || cur & COUNT_MASK == COUNT_MASK {
            return false;
        }
        if cur & GUARD == 0 || (cur & COUNT_MASK) % CHECK_EVERY == CHECK_EVERY - 1 {
            let sec = now.unwrap_or_else(Instant::now).saturating_duration_since(base).as_secs();
            if second(cur) != sec {
                return false;
            }
        }
        self.word.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Close the path: the second and count it held, if it was open.
    pub(crate) fn close(&self) -> Option<(u64, u32)> {
        let v = self.word.swap(CLOSED, Ordering::AcqRel);
        (v != CLOSED).then(|| (second(v), (v & COUNT_MASK) as u32))
    }

    /// Open the path for second `sec` (≤ [`MAX_SEC`]), guarded or not.
    pub(crate) fn open(&self, sec: u64, guarded: bool) {
        debug_assert!(sec <= MAX_SEC);
        let guard = if guarded { GUARD } else { 0 };
        self.word.store(sec << COUNT_BITS | guard, Ordering::Release);
    }

    /// The timer of second `sec` fired: unguard the word if it is still of
    /// that second (or an earlier one).
    fn unguard(&self, sec: u64) {
        let mut cur = self.word.load(Ordering::Acquire);
        while cur != CLOSED && cur & GUARD != 0 && second(cur) <= sec {
            match self.word.compare_exchange_weak(cur, cur & !GUARD, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn is_guarded(&self) -> bool {
        let cur = self.word.load(Ordering::Acquire);
        cur != CLOSED && cur & GUARD != 0
    }
}

fn second(word: u64) -> u64 {
    (word & !GUARD) >> COUNT_BITS
}

impl Wake for FastPath {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.unguard(self.guarded.load(Ordering::Acquire));
    }
}

/// The timer that ends a guarded second, kept with the breaker's locked state.
#[derive(Debug)]
pub(crate) enum Closer {
    /// No timer yet.
    None,
    /// A timer of the runtime `runtime`, with [`FastPath`] as its waker.
    Armed { sleep: Pin<Box<Sleep>>, runtime: Id },
    /// The runtime `runtime` has no timers (its builder did not enable
    /// them): successes read the clock there.
    NoTimers(Id),
}

impl Closer {
    /// Arm the timer to unguard `fast` at the end of second `sec` (counted
    /// from `base`): `true` if it is armed, so the path may be opened
    /// guarded. Outside a multi-thread tokio runtime, or in one without
    /// timers, `false`.
    pub(crate) fn arm(&mut self, fast: &Arc<FastPath>, base: Instant, sec: u64) -> bool {
        let Ok(handle) = Handle::try_current() else { return false };
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return false;
        }
        let runtime = handle.id();
        if matches!(self, Closer::NoTimers(r) if *r == runtime) {
            return false;
        }
        let deadline = base + Duration::from_secs(sec + 1);
        // `sleep_until` panics in a runtime built without timers (there is no
        // other way to ask), and polling a timer panics while its runtime
        // shuts down: then this runtime is remembered and not asked again.
        let armed = catch_unwind(AssertUnwindSafe(|| {
            match self {
                Closer::Armed { sleep, runtime: r } if *r == runtime => {
                    if sleep.deadline() == deadline && !sleep.is_elapsed() {
                        // Already armed for this second, with `fast` as its waker.
                        return true;
                    }
                    sleep.as_mut().reset(deadline);
                }
                _ => *self = Closer::Armed { sleep: Box::pin(tokio::time::sleep_until(deadline)), runtime },
            }
            let Closer::Armed { sleep, .. } = self else { return false };
            fast.guarded.store(sec, Ordering::Release);
            let waker = Waker::from(fast.clone());
            // Registers the timer with `fast` as its waker; ready if the
            // second is already over.
            sleep.as_mut().poll(&mut Context::from_waker(&waker)).is_pending()
        }));
        armed.unwrap_or_else(|_| {
            *self = Closer::NoTimers(runtime);
            false
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_open_for_the_current_second() {
        let base = Instant::now();
        let fast = FastPath::new();
        assert!(!fast.count(base, Some(base)));
        fast.open(0, false);
        assert!(fast.count(base, Some(base)));
        assert!(fast.count(base, Some(base + Duration::from_millis(999))));
        assert!(!fast.count(base, Some(base + Duration::from_secs(1))));
        assert_eq!(fast.close(), Some((0, 2)));
        assert_eq!(fast.close(), None);
    }

    #[test]
    fn a_guarded_second_reads_no_clock_until_unguarded() {
        let base = Instant::now();
        let fast = Arc::new(FastPath::new());
        fast.open(5, true);
        // `now` says another second, but the guard says the second is current.
        let later = Some(base + Duration::from_secs(9));
        assert!(fast.count(base, later));
        fast.guarded.store(5, Ordering::Release);
        fast.wake_by_ref();
        assert!(!fast.is_guarded());
        assert!(!fast.count(base, later));
        assert_eq!(fast.close(), Some((5, 1)));
    }

    #[test]
    fn the_timer_of_a_past_second_leaves_a_newer_one_guarded() {
        let fast = Arc::new(FastPath::new());
        fast.open(7, true);
        fast.unguard(6);
        assert!(fast.is_guarded());
        fast.unguard(7);
        assert!(!fast.is_guarded());
    }

    #[test]
    fn a_guarded_second_is_checked_against_the_clock_now_and_then() {
        let base = Instant::now();
        let fast = FastPath::new();
        fast.open(0, true);
        let late = Some(base + Duration::from_secs(3));
        let counted = (0..2 * CHECK_EVERY).take_while(|_| fast.count(base, late)).count() as u64;
        assert_eq!(counted, CHECK_EVERY - 1, "the check at the {CHECK_EVERY}th count sees the second is over");
    }

    #[test]
    fn outside_a_runtime_nothing_is_armed() {
        let fast = Arc::new(FastPath::new());
        assert!(!Closer::None.arm(&fast, Instant::now(), 0));
    }

    #[test]
    fn a_runtime_without_timers_is_remembered() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let _guard = rt.enter();
        let fast = Arc::new(FastPath::new());
        let mut closer = Closer::None;
        assert!(!closer.arm(&fast, Instant::now(), 0));
        assert!(matches!(closer, Closer::NoTimers(_)));
        assert!(!closer.arm(&fast, Instant::now(), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_current_thread_runtime_reads_the_clock() {
        let fast = Arc::new(FastPath::new());
        assert!(!Closer::None.arm(&fast, Instant::now(), 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_timer_unguards_when_the_second_ends() {
        // Second 0 ends 100 ms from now.
        let base = Instant::now() - Duration::from_millis(900);
        let fast = Arc::new(FastPath::new());
        let mut closer = Closer::None;
        assert!(closer.arm(&fast, base, 0));
        fast.open(0, true);
        // Armed again for the same second: the same timer.
        assert!(closer.arm(&fast, base, 0));
        assert!(fast.is_guarded());
        tokio::time::sleep_until(base + Duration::from_millis(1100)).await;
        assert!(!fast.is_guarded());
        // Arming for a second that is already over arms nothing.
        assert!(!closer.arm(&fast, base, 0));
        assert!(closer.arm(&fast, base, 1));
    }
}

/// Model-checked with loom (`scripts/loom.sh`): every interleaving of the
/// threads, up to `LOOM_MAX_PREEMPTIONS` preemptions each.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::thread;

    use super::*;

    /// Successes counted while the locked path closes the word: each one
    /// counted lock-free is in exactly one `close`, none lost or counted
    /// twice, and none is counted once the word is closed.
    #[test]
    fn loom_every_success_counted_is_closed_once() {
        loom::model(|| {
            let base = Instant::now();
            let fast = Arc::new(FastPath::new());
            fast.open(3, true);
            let counters: Vec<_> = (0..2)
                .map(|_| {
                    let fast = fast.clone();
                    thread::spawn(move || (0..2).filter(|_| fast.count(base, Some(base))).count() as u32)
                })
                .collect();
            let first = fast.close();
            let counted: u32 = counters.into_iter().map(|t| t.join().unwrap()).sum();
            let (sec, n) = first.expect("the word was open");
            assert_eq!(sec, 3);
            assert_eq!(n, counted, "the close holds every success counted before it");
            assert_eq!(fast.close(), None);
        });
    }

    /// The timer of second 5 fires while a success is counted and the
    /// locked path moves the word to second 6: the success is in exactly
    /// one close, of second 5 (it ended in second 5).
    #[test]
    fn loom_a_success_across_a_second_change_is_closed_once() {
        loom::model(|| {
            let base = Instant::now();
            let fast = Arc::new(FastPath::new());
            fast.guarded.store(5, Ordering::Release);
            fast.open(5, true);
            let timer = {
                let fast = fast.clone();
                thread::spawn(move || fast.wake_by_ref())
            };
            let counter = {
                let fast = fast.clone();
                thread::spawn(move || fast.count(base, Some(base + std::time::Duration::from_secs(5))) as u32)
            };
            // The locked path: second 5 is over, the word opens for second 6.
            let closed = fast.close().map_or(0, |(sec, n)| {
                assert_eq!(sec, 5);
                n
            });
            fast.open(6, false);
            timer.join().unwrap();
            let counted = counter.join().unwrap();
            let later = fast.close().map_or(0, |(sec, n)| {
                assert_eq!(sec, 6);
                n
            });
            assert_eq!(closed + later, counted);
            assert!(fast.close().is_none());
        });
    }

    /// The timer of second 5 fires while the word is guarded for second 5
    /// and successes are counted: once it has fired the word is unguarded,
    /// and a success then reads the clock (which says second 6) and is not
    /// counted lock-free.
    #[test]
    fn loom_a_fired_timer_unguards_its_second() {
        loom::model(|| {
            let base = Instant::now();
            let later = Some(base + std::time::Duration::from_secs(6));
            let fast = Arc::new(FastPath::new());
            fast.guarded.store(5, Ordering::Release);
            fast.open(5, true);
            let counter = {
                let fast = fast.clone();
                thread::spawn(move || fast.count(base, later) as u32)
            };
            fast.wake_by_ref();
            assert!(!fast.is_guarded());
            assert!(!fast.count(base, later), "a success after the timer fired read the clock");
            let counted = counter.join().unwrap();
            assert_eq!(fast.close(), Some((5, counted)));
        });
    }
}
