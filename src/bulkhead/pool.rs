//! The permits of one bulkhead (or of one partition of a keyed bulkhead).
//!
//! A call takes and returns its permit with one atomic operation each: the
//! count of free permits is an atomic counter. Only a call that has to wait
//! goes through a [`Notify`], and a returned permit wakes a waiter only when
//! there is one. (A `tokio::sync::Semaphore` takes a lock on every release to
//! look for waiters, which `tower::limit::ConcurrencyLimit` pays on every
//! call.)
//!
//! Striped: the permits are split into stripes, about one per CPU (a power
//! of two, each with at least [`MIN_PER_STRIPE`] permits), each on a cache
//! line of its own. A
//! thread takes from its own stripe and, when that one is empty, from the
//! others; the permit goes back to the stripe it came from. Calls on
//! different threads then touch different cache lines, so the bulkhead
//! scales with threads instead of making them wait for one line. The limit
//! stays exact: the stripes' permits add up to it.
//!
//! Fairness: while anyone waits, a new call does not take a free permit past
//! it but queues too, and [`Notify`] wakes waiters in order.
//!
//! The atomics, `Arc` and `Notify` come from [`sync`](super::sync), loom's
//! under `cfg(loom)`: the loom tests below check every interleaving of
//! taking and returning permits, the queueing rule and the wake-ups
//! (`scripts/loom.sh`).

use std::fmt;

use super::sync::{Arc, AtomicUsize, Notify, Ordering};
use crate::stripe;

/// A stripe gets at least this many permits (fewer stripes for a small bulkhead).
const MIN_PER_STRIPE: usize = 8;

/// A pool of permits.
pub(crate) struct Pool {
    stripes: Box<[Arc<Stripe>]>,
    common: Arc<Common>,
}

/// The part of a pool every stripe refers to: read on every call, written
/// only by calls that wait.
struct Common {
    waiters: AtomicUsize,
    notify: Notify,
}

/// Some of a pool's permits, on a cache line of its own (the permits taken
/// from it hold a reference to it, and count on that line too).
#[repr(align(128))]
struct Stripe {
    available: AtomicUsize,
    common: Arc<Common>,
}

impl Stripe {
    /// Take one free permit of this stripe.
    #[inline]
    fn take(&self) -> bool {
        let mut n = self.available.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                // Empty, confirmed by a read-modify-write, which reads the
                // latest count. A waiter counts itself in `waiters` and then
                // looks here; a returned permit is counted here and then
                // `waiters` is read. With a plain (relaxed) look, both could
                // miss the other and the wake-up was lost (found by
                // `loom_a_returned_permit_wakes_a_waiter`).
                match self.available.compare_exchange(0, 0, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return false,
                    Err(now) => n = now,
                }
                continue;
            }
            match self.available.compare_exchange_weak(n, n - 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }

    #[inline]
    fn release(&self) {
        self.available.fetch_add(1, Ordering::SeqCst);
        if self.common.waiters.load(Ordering::SeqCst) != 0 {
            self.common.notify.notify_one();
        }
    }
}

impl Pool {
    pub(crate) fn new(permits: usize) -> Self {
        Self::with_stripes(permits, stripe::count(permits / MIN_PER_STRIPE))
    }

    /// `permits` split over `count` stripes, rounded down to a power of two
    /// (a thread finds its stripe with a mask, not a division).
    fn with_stripes(permits: usize, count: usize) -> Self {
        let count = stripe::power_of_two_at_most(count);
        let common = Arc::new(Common { waiters: AtomicUsize::new(0), notify: Notify::new() });
        let stripes = (0..count)
            .map(|i| {
                // The first `permits % count` stripes get one more.
                let share = permits / count + usize::from(i < permits % count);
                Arc::new(Stripe { available: AtomicUsize::new(share), common: common.clone() })
            })
            .collect();
        Pool { stripes, common }
    }

    /// Permits free right now.
    pub(crate) fn available_permits(&self) -> usize {
        self.stripes.iter().map(|s| s.available.load(Ordering::Relaxed)).sum()
    }

    /// Whether any permit is taken (each holds a reference to its stripe).
    pub(crate) fn in_use(&self) -> bool {
        self.stripes.iter().any(|s| Arc::strong_count(s) > 1)
    }

    /// A free permit, unless there is none or calls are waiting for one.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<BulkheadPermit> {
        if self.common.waiters.load(Ordering::SeqCst) != 0 {
            return None;
        }
        self.take()
    }

    /// Take one free permit (waiters or not): from this thread's stripe
    /// first, then from the others in turn.
    #[inline]
    fn take(&self) -> Option<BulkheadPermit> {
        let first = stripe::mine(self.stripes.len());
        let own = &self.stripes[first];
        if own.take() {
            return Some(BulkheadPermit { stripe: own.clone() });
        }
        self.take_elsewhere(first)
    }

    #[cold]
    fn take_elsewhere(&self, first: usize) -> Option<BulkheadPermit> {
        let n = self.stripes.len();
        (1..n)
            .map(|i| &self.stripes[(first + i) & (n - 1)])
            .find(|s| s.take())
            .map(|s| BulkheadPermit { stripe: s.clone() })
    }

    /// Wait for a permit, in line with the other waiters. Dropping the future
    /// leaves the line (and passes on a wake-up it got but did not use).
    pub(crate) async fn acquire(self: std::sync::Arc<Self>) -> BulkheadPermit {
        let _waiting = Waiting::new(&self.common);
        loop {
            let notified = self.common.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a permit returned between the
            // look and the wait still wakes us.
            notified.as_mut().enable();
            if let Some(permit) = self.take() {
                return permit;
            }
            notified.await;
        }
    }

    #[cfg(test)]
    fn waiters(&self) -> usize {
        self.common.waiters.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("available", &self.available_permits())
            .field("stripes", &self.stripes.len())
            .field("waiters", &self.common.waiters.load(Ordering::Relaxed))
            .finish()
    }
}

/// Counts a waiter in for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a Common);

impl<'a> Waiting<'a> {
    fn new(common: &'a Common) -> Self {
        common.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(common)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A permit of a bulkhead's pool, held by a call in flight or taken with
/// [`BulkheadLayer::try_acquire`](super::BulkheadLayer::try_acquire); it goes
/// back to the pool when dropped.
///
/// ```
/// use tower_mesh::bulkhead::BulkheadLayer;
///
/// let bulkhead = BulkheadLayer::new(1);
/// let permit = bulkhead.try_acquire().expect("one free permit");
/// assert!(bulkhead.try_acquire().is_none());
/// drop(permit);
/// assert_eq!(bulkhead.available_permits(), 1);
/// ```
pub struct BulkheadPermit {
    stripe: Arc<Stripe>,
}

impl Drop for BulkheadPermit {
    #[inline]
    fn drop(&mut self) {
        self.stripe.release();
    }
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn permits_are_taken_and_returned() {
        let pool = Arc::new(Pool::new(2));
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        assert!(pool.try_acquire().is_none());
        assert_eq!(pool.available_permits(), 0);
        drop(a);
        assert_eq!(pool.available_permits(), 1);
        drop(b);
        assert_eq!(pool.available_permits(), 2);
        assert!(Pool::new(0).available_permits() == 0 && Arc::new(Pool::new(0)).try_acquire().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_returned_permits_in_order_and_new_calls_queue_behind_them() {
        let pool = Arc::new(Pool::new(1));
        let held = pool.try_acquire().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        for i in 0..3 {
            let (pool, tx) = (pool.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = pool.acquire().await;
                tx.send(i).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
            });
            tokio::task::yield_now().await;
        }
        // Someone is waiting: a new call does not jump the line.
        assert!(pool.try_acquire().is_none());
        drop(held);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, [0, 1, 2]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.available_permits(), 1);
        assert_eq!(pool.waiters(), 0);
        assert!(pool.try_acquire().is_some());
    }

    /// 8 tasks take permits of `pool` (of `permits`) 2,000 times each, half
    /// of them waiting for one and half giving up at once: never more than
    /// `permits` are out, and all come back.
    async fn hammer(pool: Pool, permits: usize) {
        let pool = Arc::new(pool);
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (pool, inside, most) = (pool.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    for i in 0..2_000 {
                        let permit =
                            if (t + i) % 2 == 0 { Some(pool.clone().acquire().await) } else { pool.try_acquire() };
                        if let Some(permit) = permit {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            if i % 7 == 0 {
                                tokio::task::yield_now().await;
                            }
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= permits);
        assert_eq!(pool.available_permits(), permits);
        assert_eq!(pool.waiters(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_never_more_than_the_permits_and_all_come_back() {
        hammer(Pool::new(3), 3).await;
    }

    #[test]
    fn stripes_split_the_permits_and_a_thread_takes_from_the_others_when_its_own_is_empty() {
        let pool = Pool::with_stripes(10, 4);
        let shares: Vec<_> = pool.stripes.iter().map(|s| s.available.load(Ordering::SeqCst)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(Pool::with_stripes(10, 3).stripes.len(), 2, "a power of two");
        let held: Vec<_> = (0..10).map(|_| pool.try_acquire().expect("a free permit in some stripe")).collect();
        assert!(pool.try_acquire().is_none(), "the limit is the sum of the stripes");
        assert_eq!(pool.available_permits(), 0);
        drop(held);
        let shares: Vec<_> = pool.stripes.iter().map(|s| s.available.load(Ordering::SeqCst)).collect();
        assert_eq!(shares, [3, 3, 2, 2], "each permit went back to its own stripe");
        // Small pools keep one stripe; large ones at most one per CPU.
        assert_eq!(Pool::new(MIN_PER_STRIPE * 2 - 1).stripes.len(), 1);
        assert_eq!(Pool::new(1024).stripes.len(), stripe::count(usize::MAX));
        assert_eq!(Pool::new(1024).available_permits(), 1024);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn striped_under_contention_never_more_than_the_permits_and_all_come_back() {
        hammer(Pool::with_stripes(6, 4), 6).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_a_permit_returned_to_any_stripe() {
        let pool = Arc::new(Pool::with_stripes(2, 2));
        let (a, b) = (pool.try_acquire().unwrap(), pool.try_acquire().unwrap());
        let waiter = tokio::spawn(pool.clone().acquire());
        tokio::task::yield_now().await;
        assert_eq!(pool.waiters(), 1);
        // Returned to the stripe it came from, which may not be the waiter's.
        drop(b);
        let permit = waiter.await.unwrap();
        assert_eq!(pool.available_permits(), 0);
        drop((a, permit));
        assert_eq!(pool.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_line_and_passes_its_wake_up_on() {
        let pool = Arc::new(Pool::new(1));
        let held = pool.try_acquire().unwrap();
        let gives_up = tokio::time::timeout(Duration::from_millis(5), pool.clone().acquire());
        let stays = tokio::spawn(pool.clone().acquire());
        assert!(gives_up.await.is_err());
        assert_eq!(pool.waiters(), 1);
        drop(held);
        let permit = stays.await.unwrap();
        assert_eq!(pool.available_permits(), 0);
        drop(permit);
        assert_eq!(pool.available_permits(), 1);
        assert_eq!(pool.waiters(), 0);
    }
}

/// Model-checked with loom (`scripts/loom.sh`): every interleaving of the
/// threads, up to `LOOM_MAX_PREEMPTIONS` preemptions each.
#[cfg(all(test, loom))]
mod loom_tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use loom::future::block_on;
    use loom::thread;

    use super::*;

    /// Threads take and return permits of a pool of 2 permits in 2 stripes
    /// (one each), some waiting and some giving up at once: never more than
    /// 2 are held, and all come back.
    #[test]
    fn loom_never_more_than_the_limit_and_no_permit_lost() {
        loom::model(|| {
            let pool = std::sync::Arc::new(Pool::with_stripes(2, 2));
            let inside = Arc::new(AtomicUsize::new(0));
            let call = |pool: &std::sync::Arc<Pool>, inside: &AtomicUsize, wait: bool| {
                let permit = if wait { Some(block_on(pool.clone().acquire())) } else { pool.try_acquire() };
                if let Some(permit) = permit {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= 2, "{now} permits held of 2");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            };
            let threads: Vec<_> = [true, false]
                .into_iter()
                .map(|wait| {
                    let (pool, inside) = (pool.clone(), inside.clone());
                    thread::spawn(move || call(&pool, &inside, wait))
                })
                .collect();
            call(&pool, &inside, true);
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(pool.available_permits(), 2);
            assert_eq!(pool.waiters(), 0);
            assert!(!pool.in_use());
        });
    }

    /// A permit returned (to either stripe) while a call waits wakes it: a
    /// lost wake-up would leave the waiter blocked, which loom reports.
    #[test]
    fn loom_a_returned_permit_wakes_a_waiter() {
        loom::model(|| {
            let pool = std::sync::Arc::new(Pool::with_stripes(2, 2));
            let (a, b) = (pool.try_acquire().unwrap(), pool.try_acquire().unwrap());
            let waiter = {
                let pool = pool.clone();
                thread::spawn(move || drop(block_on(pool.acquire())))
            };
            drop(b);
            waiter.join().unwrap();
            drop(a);
            assert_eq!(pool.available_permits(), 2);
            assert_eq!(pool.waiters(), 0);
        });
    }

    /// While a call waits, a new call does not take the permit returned for
    /// it: it is refused (or finds the permit already taken by the waiter).
    #[test]
    fn loom_new_calls_queue_behind_a_waiter() {
        loom::model(|| {
            let pool = std::sync::Arc::new(Pool::with_stripes(1, 1));
            let held = pool.try_acquire().unwrap();
            let waiter = {
                let pool = pool.clone();
                // The waiter keeps its permit until joined.
                thread::spawn(move || block_on(pool.acquire()))
            };
            while pool.waiters() == 0 {
                thread::yield_now();
            }
            drop(held);
            assert!(pool.try_acquire().is_none(), "a new call took the permit past the waiter");
            drop(waiter.join().unwrap());
            assert_eq!(pool.available_permits(), 1);
        });
    }

    /// A waiter that gives up (its future dropped), even after the wake-up
    /// meant for it, does not swallow it: the waiter behind it gets the
    /// permit.
    #[test]
    fn loom_a_cancelled_waiter_does_not_swallow_a_wake_up() {
        loom::model(|| {
            let pool = std::sync::Arc::new(Pool::with_stripes(1, 1));
            let held = pool.try_acquire().unwrap();
            let stays = {
                let pool = pool.clone();
                thread::spawn(move || drop(block_on(pool.acquire())))
            };
            {
                let mut gives_up = pin!(pool.clone().acquire());
                let mut cx = Context::from_waker(Waker::noop());
                assert!(gives_up.as_mut().poll(&mut cx).is_pending(), "the permit is held");
                drop(held);
                // Dropped with or without the wake-up, before or after `stays` got in line.
            }
            stays.join().unwrap();
            assert_eq!(pool.available_permits(), 1);
            assert_eq!(pool.waiters(), 0);
        });
    }
}
