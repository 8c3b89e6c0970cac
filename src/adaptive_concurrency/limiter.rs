//! The state every service of one adaptive limit shares: calls in flight,
//! the limit and the algorithm, behind one `std` mutex (held for a few
//! arithmetic operations, never across an `.await`), and the metric handles.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::algorithm::{Algorithm, Sample};
use super::error::ConcurrencyLimited;

/// Calls in flight, the limit, the algorithm and the metrics of one limit.
pub(crate) struct Limiter {
    pub(crate) name: Arc<str>,
    min: f64,
    max: f64,
    pub(crate) max_wait: Duration,
    state: Mutex<State>,
    /// Wakes a waiting call when a slot frees up (only with a `max_wait`).
    notify: Notify,
    waiters: AtomicUsize,
    metrics: Metrics,
}

struct State {
    in_flight: usize,
    /// The algorithm's estimate; the limit is its integer part.
    estimate: f64,
    limit: usize,
    /// The limit last reported by a tracing event.
    reported: usize,
    algorithm: Algorithm,
}

struct Metrics {
    limit: Gauge,
    in_flight: Gauge,
    rtt_long: Gauge,
    rtt_short: Gauge,
    rejections: Counter,
}

impl Limiter {
    pub(crate) fn new(name: Arc<str>, limits: [usize; 3], max_wait: Duration, algorithm: Algorithm) -> Self {
        let [initial, min, max] = limits;
        let label = name.to_string();
        let metrics = Metrics {
            limit: metrics::gauge!("tower_mesh_adaptive_concurrency_limit", "service" => label.clone()),
            in_flight: metrics::gauge!("tower_mesh_adaptive_concurrency_in_flight", "service" => label.clone()),
            rtt_long: metrics::gauge!("tower_mesh_adaptive_concurrency_rtt_long_seconds", "service" => label.clone()),
            rtt_short: metrics::gauge!("tower_mesh_adaptive_concurrency_rtt_short_seconds", "service" => label.clone()),
            rejections: metrics::counter!("tower_mesh_adaptive_concurrency_rejections_total", "service" => label),
        };
        metrics.limit.set(initial as f64);
        let state = State { in_flight: 0, estimate: initial as f64, limit: initial, reported: initial, algorithm };
        Limiter {
            name,
            min: min as f64,
            max: max as f64,
            max_wait,
            state: Mutex::new(state),
            notify: Notify::new(),
            waiters: AtomicUsize::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The long-term RTT estimate (Gradient2), once there is a sample.
    pub(crate) fn long_rtt(&self) -> Option<Duration> {
        self.lock().algorithm.long_rtt().map(Duration::from_secs_f64)
    }

    /// Take a slot if the calls in flight are below the limit: the calls in
    /// flight, this one included.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<usize> {
        let mut state = self.lock();
        if state.in_flight >= state.limit {
            return None;
        }
        state.in_flight += 1;
        self.metrics.in_flight.set(state.in_flight as f64);
        Some(state.in_flight)
    }

    /// Give a slot back, with the call's sample if it has one (a cancelled
    /// or ignored call has none).
    #[inline]
    pub(crate) fn release(&self, sample: Option<Sample>) {
        {
            let mut state = self.lock();
            state.in_flight -= 1;
            self.metrics.in_flight.set(state.in_flight as f64);
            if let Some(sample) = sample {
                self.update(&mut state, sample);
            }
        }
        if !self.max_wait.is_zero() {
            self.notify.notify_one();
        }
    }

    fn update(&self, state: &mut State, sample: Sample) {
        state.estimate = state.algorithm.update(state.estimate, sample, self.min, self.max);
        if !sample.dropped {
            self.metrics.rtt_short.set(sample.rtt.as_secs_f64());
        }
        if let Some(long) = state.algorithm.long_rtt() {
            self.metrics.rtt_long.set(long);
        }
        let limit = state.estimate as usize;
        if limit == state.limit {
            return;
        }
        state.limit = limit;
        self.metrics.limit.set(limit as f64);
        // An event when the limit has moved by 10 % (by 1 below 10) since the last one.
        if limit.abs_diff(state.reported) * 10 >= state.reported.max(10) {
            tracing::debug!(service = %self.name, from = state.reported, to = limit, "adaptive concurrency limit changed");
            state.reported = limit;
        }
    }

    /// A call is rejected: count it, log it and make the error.
    #[cold]
    pub(crate) fn reject(&self, waited: Duration) -> ConcurrencyLimited {
        self.metrics.rejections.increment(1);
        let limit = self.limit();
        tracing::debug!(service = %self.name, limit, ?waited, "adaptive concurrency limit reached, call rejected");
        ConcurrencyLimited::new(self.name.clone(), limit, waited)
    }

    /// Start waiting, up to `max_wait`, for a slot; `None` when as many calls
    /// as the limit already wait (the queue is bounded). Only on the slow
    /// path, so the one allocation is fine.
    #[cold]
    pub(crate) fn wait(self: &Arc<Self>) -> Option<Waiting> {
        let limit = self.limit();
        let mut n = self.waiters.load(Ordering::Relaxed);
        loop {
            if n >= limit {
                return None;
            }
            match self.waiters.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let guard = WaiterGuard(self.clone());
        let acquire = tokio::time::timeout(self.max_wait, async move {
            let limiter = &guard.0;
            loop {
                let notified = limiter.notify.notified();
                tokio::pin!(notified);
                // Registered before looking, so a slot freed in between wakes us.
                notified.as_mut().enable();
                if let Some(in_flight) = limiter.try_acquire() {
                    return in_flight;
                }
                notified.await;
            }
        });
        Some(Waiting { acquire: Box::pin(async move { acquire.await.ok() }), started: Instant::now() })
    }
}

/// Counts a waiting call while it waits.
struct WaiterGuard(Arc<Limiter>);

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("AdaptiveConcurrency")
            .field("name", &self.name)
            .field("limit", &state.limit)
            .field("in_flight", &state.in_flight)
            .field("algorithm", &state.algorithm)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// Waiting for a slot, for at most `max_wait`: resolves to the calls in
/// flight (this one included), or `None` on timeout.
pub(crate) struct Waiting {
    pub(crate) acquire: Pin<Box<dyn Future<Output = Option<usize>> + Send + Sync>>,
    pub(crate) started: Instant,
}

impl fmt::Debug for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiting").field("started", &self.started).finish_non_exhaustive()
    }
}

/// The limiter and the classifier, shared by the services and their calls.
pub(crate) struct Shared<C> {
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) classifier: C,
}

/// A slot held for a call; given back when dropped — without a sample, so a
/// cancelled call does not move the limit — or by [`Permit::finish`] with one.
pub(crate) struct Permit<C> {
    shared: Arc<Shared<C>>,
    in_flight: usize,
    started: Instant,
    done: bool,
}

impl<C> Permit<C> {
    pub(crate) fn new(shared: Arc<Shared<C>>, in_flight: usize) -> Self {
        Permit { shared, in_flight, started: Instant::now(), done: false }
    }

    pub(crate) fn shared(&self) -> &Shared<C> {
        &self.shared
    }

    /// The call starts now (the slot may have been taken in `poll_ready`).
    #[inline]
    pub(crate) fn start(mut self) -> Self {
        self.started = Instant::now();
        self
    }

    /// The call is over: `Some(dropped)` feeds a sample, `None` (an ignored
    /// outcome) does not.
    #[inline]
    pub(crate) fn finish(mut self, dropped: Option<bool>) {
        self.done = true;
        let sample = dropped.map(|dropped| Sample {
            started: self.started,
            rtt: self.started.elapsed(),
            in_flight: self.in_flight,
            dropped,
        });
        self.shared.limiter.release(sample);
    }
}

impl<C> Drop for Permit<C> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.limiter.release(None);
        }
    }
}

impl<C> fmt::Debug for Permit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("in_flight", &self.in_flight).finish_non_exhaustive()
    }
}
