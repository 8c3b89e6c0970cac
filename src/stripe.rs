//! Striping shared state by thread: state that every call writes (a count,
//! a reference count) is kept in several copies, each on a cache line of its
//! own, and each thread uses one of them, so that calls on different threads
//! do not wait for the same cache line.

use std::cell::Cell;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering};

/// At most this many stripes.
const MAX_STRIPES: usize = 16;

#[cfg(not(loom))]
thread_local! {
    /// Threads are numbered in the order they first ask.
    static THREAD_NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[cfg(not(loom))]
static NEXT_THREAD_NUMBER: AtomicUsize = AtomicUsize::new(0);

// Under loom, per loom thread and per execution: each execution numbers its
// threads the same way, so each takes the same path.
#[cfg(loom)]
loom::thread_local! {
    static THREAD_NUMBER: Cell<usize> = Cell::new(usize::MAX);
}

#[cfg(loom)]
loom::lazy_static! {
    static ref NEXT_THREAD_NUMBER: AtomicUsize = AtomicUsize::new(0);
}

/// This thread's number: thread `n` uses stripe `n & (stripes - 1)`.
#[inline]
fn thread_number() -> usize {
    THREAD_NUMBER
        .try_with(|n| {
            let v = n.get();
            if v != usize::MAX {
                return v;
            }
            let next = NEXT_THREAD_NUMBER.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            n.set(next);
            next
        })
        // Called while the thread's locals are being destroyed: any stripe will do.
        .unwrap_or(0)
}

/// The index of this thread's stripe among `stripes` (a power of two).
#[inline]
pub(crate) fn mine(stripes: usize) -> usize {
    debug_assert!(stripes.is_power_of_two());
    if stripes == 1 {
        0
    } else {
        thread_number() & (stripes - 1)
    }
}

/// The largest power of two not above `n` (1 for 0).
pub(crate) fn power_of_two_at_most(n: usize) -> usize {
    1 << n.max(1).ilog2()
}

/// How many stripes for state that `at_most` allows (a power of two, about
/// one per CPU, at least one).
pub(crate) fn count(at_most: usize) -> usize {
    power_of_two_at_most(at_most.min(cpus()).min(MAX_STRIPES))
}

/// The CPUs this process may use, asked once: the answer reads the affinity
/// mask and cgroup files, and a keyed bulkhead makes a pool for every new key.
fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_are_powers_of_two_and_threads_keep_their_number() {
        for at_most in [0, 1, 3, 5, 100] {
            let n = count(at_most);
            assert!(n.is_power_of_two() && n <= MAX_STRIPES && n <= at_most.max(1), "{at_most}: {n}");
        }
        assert_eq!((power_of_two_at_most(0), power_of_two_at_most(6), power_of_two_at_most(8)), (1, 4, 8));
        assert_eq!(mine(1), 0);
        assert!(mine(4) < 4);
        let me = thread_number();
        assert_eq!(thread_number(), me);
        let other = std::thread::spawn(thread_number).join().unwrap();
        assert_ne!(other, me);
    }
}
