//! The sliding windows: a ring of outcomes (count) or of per-second buckets (time).

use std::time::Duration;

use tokio::time::Instant;

use crate::circuit_breaker::config::SlidingWindow;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    pub(super) fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += failed as u32;
        self.slow += slow as u32;
    }
    pub(super) fn rates(&self) -> (f64, f64) {
        let c = self.calls.max(1) as f64;
        (self.failures as f64 * 100.0 / c, self.slow as f64 * 100.0 / c)
    }
}

/// Ring of the last `n` outcomes (bit 0 failed, bit 1 slow) with running totals: O(1) per record.
#[derive(Debug)]
pub(crate) struct CountWindow {
    pub(super) slots: Box<[u8]>,
    pub(super) next: usize,
    pub(super) len: usize,
    pub(super) totals: Totals,
}

impl CountWindow {
    pub(crate) fn new(n: usize) -> Self {
        CountWindow { slots: vec![0; n].into_boxed_slice(), next: 0, len: 0, totals: Totals::default() }
    }
    #[inline]
    pub(super) fn record(&mut self, failed: bool, slow: bool) {
        if self.len == self.slots.len() {
            let old = self.slots[self.next];
            self.totals.calls -= 1;
            self.totals.failures -= (old & 1) as u32;
            self.totals.slow -= (old >> 1) as u32;
        } else {
            self.len += 1;
        }
        self.slots[self.next] = failed as u8 | ((slow as u8) << 1);
        self.next += 1;
        if self.next == self.slots.len() {
            self.next = 0;
        }
        self.totals.add(failed, slow);
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Bucket {
    pub(super) sec: u64,
    pub(super) totals: Totals,
}

/// Ring of per-second buckets with running totals; buckets that fall out of
/// the window are subtracted as time advances (amortized O(1) per record).
#[derive(Debug)]
pub(crate) struct TimeWindow {
    pub(super) buckets: Box<[Bucket]>,
    pub(super) base: Instant,
    pub(super) head: u64,
    /// End of the `head` second: a record before it needs no bucket arithmetic.
    pub(super) head_end: Instant,
    pub(super) totals: Totals,
}

impl TimeWindow {
    pub(crate) fn new(secs: usize, now: Instant) -> Self {
        TimeWindow {
            buckets: vec![Bucket::default(); secs].into_boxed_slice(),
            base: now,
            head: 0,
            head_end: now + Duration::from_secs(1),
            totals: Totals::default(),
        }
    }
    #[inline]
    pub(super) fn advance(&mut self, now: Instant) {
        if now < self.head_end {
            return;
        }
        self.advance_slow(now);
    }
    #[cold]
    pub(super) fn advance_slow(&mut self, now: Instant) {
        let sec = now.saturating_duration_since(self.base).as_secs();
        if sec <= self.head {
            return;
        }
        let n = self.buckets.len() as u64;
        let steps = (sec - self.head).min(n);
        for s in sec + 1 - steps..=sec {
            let b = &mut self.buckets[(s % n) as usize];
            self.totals.calls -= b.totals.calls;
            self.totals.failures -= b.totals.failures;
            self.totals.slow -= b.totals.slow;
            *b = Bucket { sec: s, totals: Totals::default() };
        }
        self.head = sec;
        self.head_end = self.base + Duration::from_secs(sec + 1);
    }
    /// Empty the window, keeping the bucket alignment (whole seconds since
    /// the breaker was built, like resilience4j's epoch-second buckets).
    pub(super) fn clear(&mut self, now: Instant) {
        self.buckets.fill(Bucket::default());
        self.totals = Totals::default();
        self.head = now.saturating_duration_since(self.base).as_secs();
        self.head_end = self.base + Duration::from_secs(self.head + 1);
        let n = self.buckets.len() as u64;
        self.buckets[(self.head % n) as usize].sec = self.head;
    }
    /// Add `n` successes of second `sec` (counted without the lock, see
    /// [`Shared::fast`]); a second that has left the window is dropped.
    pub(super) fn add_successes(&mut self, sec: u64, n: u32) {
        let len = self.buckets.len() as u64;
        if sec > self.head || self.head - sec >= len {
            return;
        }
        let b = &mut self.buckets[(sec % len) as usize];
        if b.sec != sec {
            return;
        }
        b.totals.calls += n;
        self.totals.calls += n;
    }
    pub(super) fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        self.advance(now);
        let n = self.buckets.len() as u64;
        let b = &mut self.buckets[(self.head % n) as usize];
        debug_assert_eq!(b.sec, self.head);
        b.totals.add(failed, slow);
        self.totals.add(failed, slow);
    }
}

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(super) fn new(kind: SlidingWindow, now: Instant) -> Self {
        match kind {
            SlidingWindow::Count(n) => Window::Count(CountWindow::new(n)),
            SlidingWindow::Time(d) => {
                let secs = d.as_secs() + (d.subsec_nanos() > 0) as u64;
                Window::Time(TimeWindow::new(secs.max(1) as usize, now))
            }
        }
    }
    pub(super) fn clear(&mut self, now: Instant) {
        match self {
            Window::Count(w) => *w = CountWindow::new(w.slots.len()),
            Window::Time(w) => w.clear(now),
        }
    }
    /// `now`: the current time if the caller read it (timed calls), else read here.
    pub(super) fn record(&mut self, now: Option<Instant>, failed: bool, slow: bool) {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(now.unwrap_or_else(Instant::now), failed, slow),
        }
    }
    /// A full count window without failures or slow calls (see [`Shared::clean`]).
    pub(super) fn is_clean(&self) -> bool {
        match self {
            Window::Count(w) => w.len == w.slots.len() && w.totals.failures == 0 && w.totals.slow == 0,
            Window::Time(_) => false,
        }
    }
    pub(super) fn totals(&mut self, now: Option<Instant>) -> Totals {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => {
                w.advance(now.unwrap_or_else(Instant::now));
                w.totals
            }
        }
    }
}
