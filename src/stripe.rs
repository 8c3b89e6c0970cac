//! Striping shared state by thread: state that every call writes (a count,
//! a reference count) is kept in several copies, each on a cache line of its
//! own, and each thread uses one of them, so that calls on different threads
//! do not wait for the same cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many stripes.
const MAX_STRIPES: usize = 16;

thread_local! {
    /// Threads are numbered in the order they first ask.
    static THREAD_NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_THREAD_NUMBER: AtomicUsize = AtomicUsize::new(0);

/// This thread's number: thread `n` uses stripe `n & (stripes - 1)`.
#[inline]
pub(crate) fn thread_number() -> usize {
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

/// How many stripes for state that `at_most` allows (a power of two, about
/// one per CPU, at least one).
pub(crate) fn count(at_most: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    1 << at_most.min(cpus).clamp(1, MAX_STRIPES).ilog2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_powers_of_two_and_threads_keep_their_number() {
        for at_most in [0, 1, 3, 5, 100] {
            let n = count(at_most);
            assert!(n.is_power_of_two() && n <= MAX_STRIPES && n <= at_most.max(1), "{at_most}: {n}");
        }
        let me = thread_number();
        assert_eq!(thread_number(), me);
        let other = std::thread::spawn(thread_number).join().unwrap();
        assert_ne!(other, me);
    }
}
