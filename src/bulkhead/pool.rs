//! The permits of one bulkhead (or of one partition of a keyed bulkhead).
//!
//! A call takes and returns its permit with one atomic operation each: the
//! count of free permits is an atomic counter. Only a call that has to wait
//! goes through a [`Notify`], and a returned permit wakes a waiter only when
//! there is one. (A `tokio::sync::Semaphore` takes a lock on every release to
//! look for waiters, which `tower::limit::ConcurrencyLimit` pays on every
//! call.)
//!
//! Fairness: while anyone waits, a new call does not take a free permit past
//! it but queues too, and [`Notify`] wakes waiters in order.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A pool of permits.
pub(crate) struct Pool {
    available: AtomicUsize,
    waiters: AtomicUsize,
    notify: Notify,
}

impl Pool {
    pub(crate) fn new(permits: usize) -> Self {
        Pool { available: AtomicUsize::new(permits), waiters: AtomicUsize::new(0), notify: Notify::new() }
    }

    /// Permits free right now.
    pub(crate) fn available_permits(&self) -> usize {
        self.available.load(Ordering::Relaxed)
    }

    /// A free permit, unless there is none or calls are waiting for one.
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<BulkheadPermit> {
        if self.waiters.load(Ordering::SeqCst) != 0 {
            return None;
        }
        self.take().then(|| BulkheadPermit { pool: self.clone() })
    }

    /// Take one free permit (waiters or not).
    #[inline]
    fn take(&self) -> bool {
        let mut n = self.available.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return false;
            }
            match self.available.compare_exchange_weak(n, n - 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }

    /// Wait for a permit, in line with the other waiters. Dropping the future
    /// leaves the line (and passes on a wake-up it got but did not use).
    pub(crate) async fn acquire(self: Arc<Self>) -> BulkheadPermit {
        let _waiting = Waiting::new(&self.waiters);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a permit returned between the
            // look and the wait still wakes us.
            notified.as_mut().enable();
            if self.take() {
                return BulkheadPermit { pool: self.clone() };
            }
            notified.await;
        }
    }

    #[inline]
    fn release(&self) {
        self.available.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.notify.notify_one();
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("available", &self.available_permits())
            .field("waiters", &self.waiters.load(Ordering::Relaxed))
            .finish()
    }
}

/// Counts a waiter in for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
    pool: Arc<Pool>,
}

impl Drop for BulkheadPermit {
    #[inline]
    fn drop(&mut self) {
        self.pool.release();
    }
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit").finish_non_exhaustive()
    }
}

#[cfg(test)]
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
        assert_eq!(pool.waiters.load(Ordering::SeqCst), 0);
        assert!(pool.try_acquire().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_never_more_than_the_permits_and_all_come_back() {
        let pool = Arc::new(Pool::new(3));
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (pool, inside, most) = (pool.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    for i in 0..2_000 {
                        // Half the calls wait for a permit, half give up at once.
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
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!(pool.available_permits(), 3);
        assert_eq!(pool.waiters.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_line_and_passes_its_wake_up_on() {
        let pool = Arc::new(Pool::new(1));
        let held = pool.try_acquire().unwrap();
        let gives_up = tokio::time::timeout(Duration::from_millis(5), pool.clone().acquire());
        let stays = tokio::spawn(pool.clone().acquire());
        assert!(gives_up.await.is_err());
        assert_eq!(pool.waiters.load(Ordering::SeqCst), 1);
        drop(held);
        let permit = stays.await.unwrap();
        assert_eq!(pool.available_permits(), 0);
        drop(permit);
        assert_eq!(pool.available_permits(), 1);
        assert_eq!(pool.waiters.load(Ordering::SeqCst), 0);
    }
}
