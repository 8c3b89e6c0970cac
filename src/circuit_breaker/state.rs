//! The shared state machine and the sliding windows.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::Label;
use tokio::runtime::Id;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::closer::{Closer, FastPath, MAX_SEC as FAST_MAX_SEC};
use super::config::SlidingWindow;
use super::CircuitOpen;

mod expiry;
mod settings;
mod window;

pub(crate) use self::settings::{metric_labels, Settings};
use self::settings::{with_label, Metrics};
use self::window::{Totals, Window};

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CircuitState {
    /// Calls pass and are recorded; the breaker opens when a rate reaches its threshold.
    Closed = 0,
    /// Calls are rejected until the open wait has elapsed.
    Open = 1,
    /// A limited number of probe calls pass; their rates decide close or re-open.
    HalfOpen = 2,
    /// Calls pass and are not recorded; no transition happens by itself.
    Disabled = 3,
    /// Calls are rejected until a manual transition.
    ForcedOpen = 4,
    /// Calls pass and are recorded, but the breaker never opens by itself.
    MetricsOnly = 5,
}

impl CircuitState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            3 => CircuitState::Disabled,
            4 => CircuitState::ForcedOpen,
            _ => CircuitState::MetricsOnly,
        }
    }

    /// Short name (`closed`, `open`, `half_open`, `disabled`, `forced_open`, `metrics_only`).
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Disabled => "disabled",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::MetricsOnly => "metrics_only",
        }
    }

    /// Whether calls are admitted without restriction in this state.
    pub fn admits_all(self) -> bool {
        matches!(self, CircuitState::Closed | CircuitState::Disabled | CircuitState::MetricsOnly)
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state transition, passed to [`on_state_change`](super::CircuitBreakerBuilder::on_state_change) callbacks.
#[derive(Clone, Debug, PartialEq)]
pub struct StateChange {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
    /// Failure rate (percent) of the window that decided the transition
    /// (`None` when it held too few calls, or for a manual transition).
    pub failure_rate: Option<f64>,
    /// Slow-call rate (percent), likewise.
    pub slow_call_rate: Option<f64>,
}

/// A snapshot of a breaker's counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircuitMetrics {
    /// Current state.
    pub state: CircuitState,
    /// Calls recorded in the current window (in half-open: the probe calls so far).
    pub calls: u32,
    /// Failed calls among them.
    pub failures: u32,
    /// Slow calls among them.
    pub slow_calls: u32,
    /// `failures / calls` in percent (`None` below the minimum number of calls).
    pub failure_rate: Option<f64>,
    /// `slow_calls / calls` in percent (`None` below the minimum number of calls).
    pub slow_call_rate: Option<f64>,
    /// Calls rejected since the breaker was built.
    pub not_permitted: u64,
}

/// What an admitted call holds: the period (the run of one state between two
/// transitions) it was admitted in, and whether it holds a half-open probe
/// slot of that period. A call counts only for the period it was admitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) period: u32,
    pub(crate) probe: bool,
}

/// What a finished call counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rec {
    Success,
    Failure,
    Ignored,
}

pub(crate) type Listener = Arc<dyn Fn(&StateChange) + Send + Sync>;

#[derive(Debug)]
struct HalfOpen {
    free: u32,
    totals: Totals,
    since: Instant,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    epoch: u32,
    window: Window,
    open_until: Instant,
    trips: u32,
    half_open: HalfOpen,
    /// Mirror of [`Shared::clean`], to write the atomic only when it changes.
    clean: bool,
    /// Time windows: the timer ending the second [`Shared::fast`] is open for.
    closer: Closer,
    /// In half-open with a max wait: the task that re-opens the breaker at
    /// the end of the max wait (aborted when half-open ends before).
    expiry: Option<AbortHandle>,
    /// A runtime found to have no timers (no expiry task is armed there).
    no_timers: Option<Id>,
}

/// Everything the clones of one breaker share.
pub struct Shared {
    pub(crate) name: Arc<str>,
    /// Time windows: when the window began (second 0 of its buckets).
    window_base: Option<Instant>,
    /// Time windows: successes recorded without the lock (see [`FastPath`]).
    /// Open only while the breaker is closed (or metrics-only) with a window
    /// holding no failure and no slow call, and thresholds above 0, so one
    /// more success cannot change the state: a fast success of the open
    /// second then only bumps the count. Whoever takes the lock first closes
    /// it and adds the count to the window (see [`Shared::lock`]); a record
    /// that leaves the window clean opens it again for the current second.
    fast: Arc<FastPath>,
    pub(crate) settings: Settings,
    /// The state (low 8 bits) and the period it began (`Inner::epoch`, above):
    /// one word, so a call reads both at once.
    state: AtomicU64,
    /// True while the breaker is closed (or metrics-only) with a full count
    /// window holding no failure and no slow call: recording a fast success
    /// then changes nothing (the ring stays all successes), so it is skipped
    /// without taking the lock. A success skipped concurrently with a failure
    /// being recorded is ordered before that failure.
    clean: AtomicBool,
    not_permitted: AtomicU64,
    inner: Mutex<Inner>,
    pub(crate) metrics: Metrics,
    labels: Vec<Label>,
    listeners: Vec<Listener>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("settings", &self.settings)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = g.expiry.take() {
            task.abort();
        }
    }
}

impl Shared {
    /// `name` names the breaker in logs and errors; `labels` label its metrics.
    pub(crate) fn new(name: Arc<str>, labels: Vec<Label>, settings: Settings, listeners: Vec<Listener>) -> Self {
        let now = Instant::now();
        let metrics = Metrics::new(&labels);
        metrics.state.set(0.0);
        Shared {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                epoch: 1,
                window: Window::new(settings.window, now),
                open_until: now,
                trips: 0,
                half_open: HalfOpen { free: 0, totals: Totals::default(), since: now },
                clean: false,
                closer: Closer::None,
                expiry: None,
                no_timers: None,
            }),
            clean: AtomicBool::new(false),
            window_base: matches!(settings.window, SlidingWindow::Time(_)).then_some(now),
            fast: Arc::new(FastPath::new()),
            name,
            settings,
            state: AtomicU64::new(pack(1, CircuitState::Closed)),
            not_permitted: AtomicU64::new(0),
            metrics,
            labels,
            listeners,
        }
    }

    /// The state, with the successes counted without the lock added to the
    /// window (and the lock-free path closed until a record opens it again).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if self.window_base.is_some() {
            if let Some((sec, count)) = self.fast.close() {
                if let Window::Time(w) = &mut g.window {
                    w.add_successes(sec, count);
                }
            }
        }
        g
    }

    /// Open the lock-free success path for the window's current second if
    /// one more success cannot trip the breaker (see [`Shared::fast`]),
    /// guarded by a timer when the runtime has one (then a success reads no
    /// clock).
    fn open_fast(&self, g: &mut Inner) {
        let Window::Time(w) = &g.window else { return };
        let healthy = w.totals.failures == 0 && w.totals.slow == 0;
        if healthy && self.settings.failure_rate > 0.0 && self.settings.slow_rate > 0.0 && w.head <= FAST_MAX_SEC {
            let (head, base) = (w.head, w.base);
            let guarded = g.closer.arm(&self.fast, base, head);
            self.fast.open(head, guarded);
        }
    }

    /// Whether a timer guards the lock-free success path (see [`FastPath`]).
    #[cfg(test)]
    pub(crate) fn fast_path_guarded(&self) -> bool {
        self.fast.is_guarded()
    }

    /// The state as stored (see [`Shared::observed_state`] for the state
    /// with a due half-open expiry applied).
    #[inline]
    pub(crate) fn state(&self) -> CircuitState {
        unpack(self.state.load(Ordering::Acquire)).1
    }

    /// The state, after applying the end of the half-open max wait if it has
    /// passed (as the expiry timer would have, at that moment).
    pub(crate) fn observed_state(&self) -> CircuitState {
        let state = self.state();
        if state != CircuitState::HalfOpen || self.settings.max_wait_in_half_open.is_zero() {
            return state;
        }
        let now = Instant::now();
        let mut g = self.lock();
        let change = self.expire_half_open(&mut g, now);
        let state = g.state;
        drop(g);
        if let Some(c) = change {
            self.notify(&c);
        }
        state
    }

    /// Admission: the call's [`Ticket`], or the rejection.
    #[inline]
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<Ticket, CircuitOpen> {
        let (period, state) = unpack(self.state.load(Ordering::Acquire));
        if state.admits_all() {
            return Ok(Ticket { period, probe: false });
        }
        self.acquire_slow()
    }

    #[cold]
    fn acquire_slow(self: &Arc<Self>) -> Result<Ticket, CircuitOpen> {
        let now = Instant::now();
        let mut g = self.lock();
        // The end of the max wait in half-open, as of that moment; then the
        // end of the open wait, as of this call.
        let expired = self.expire_half_open(&mut g, now);
        let probing = if g.state == CircuitState::Open && now >= g.open_until {
            let c = self.transition(&mut g, CircuitState::HalfOpen, now, None);
            self.arm_expiry(&mut g);
            Some(c)
        } else {
            None
        };
        let result = match g.state {
            s if s.admits_all() => Ok(Ticket { period: g.epoch, probe: false }),
            CircuitState::HalfOpen if g.half_open.free > 0 => {
                g.half_open.free -= 1;
                Ok(Ticket { period: g.epoch, probe: true })
            }
            state => Err(CircuitOpen {
                name: self.name.clone(),
                state,
                retry_after: (state == CircuitState::Open).then(|| g.open_until.saturating_duration_since(now)),
            }),
        };
        drop(g);
        for c in [expired, probing].iter().flatten() {
            self.notify(c);
        }
        if result.is_err() {
            self.not_permitted.fetch_add(1, Ordering::Relaxed);
            self.metrics.rejected.increment(1);
        }
        result
    }

    /// Record a finished call that was admitted with `ticket` (see [`acquire`]).
    /// `elapsed` is the call's duration when calls are timed
    /// ([`Settings::measure`]), and `now` then the current time (else a
    /// time window reads it when it needs it: not for a success counted by a
    /// guarded [`FastPath`]).
    #[inline]
    pub(crate) fn record(&self, rec: Rec, elapsed: Option<Duration>, now: Option<Instant>, ticket: Ticket) {
        let mut slow = false;
        if let Some(elapsed) = elapsed {
            self.metrics.duration.record(elapsed.as_secs_f64());
            slow = rec != Rec::Ignored && self.settings.slow_duration.is_some_and(|d| elapsed >= d);
            if slow {
                self.metrics.slow.increment(1);
            }
        }
        match rec {
            Rec::Success => self.metrics.success.increment(1),
            Rec::Failure => self.metrics.failure.increment(1),
            Rec::Ignored => self.metrics.ignored.increment(1),
        }
        if !ticket.probe {
            if rec == Rec::Ignored {
                return;
            }
            // A call admitted in an earlier period (before a trip, a manual
            // transition) counts for nothing now.
            let (period, state) = unpack(self.state.load(Ordering::Acquire));
            if period != ticket.period
                || state == CircuitState::Disabled
                || (rec == Rec::Success && !slow && self.clean.load(Ordering::Acquire))
            {
                return;
            }
            if rec == Rec::Success && !slow {
                if let Some(base) = self.window_base {
                    if self.fast.count(base, now) {
                        return;
                    }
                }
            }
        }
        self.record_locked(rec, slow, now, ticket);
    }

    fn record_locked(&self, rec: Rec, slow: bool, now: Option<Instant>, ticket: Ticket) {
        let failed = rec == Rec::Failure;
        let mut g = self.lock();
        // Untimed count-window calls read no clock; a transition (rare) does.
        let stamp = || now.unwrap_or_else(Instant::now);
        let mut change = None;
        if ticket.probe {
            // A probe: only counts for the half-open period it was admitted
            // in, and not once that period's max wait is over.
            change = self.expire_half_open(&mut g, stamp());
            if g.state == CircuitState::HalfOpen && g.epoch == ticket.period {
                if rec == Rec::Ignored {
                    g.half_open.free += 1;
                } else {
                    g.half_open.totals.add(failed, slow);
                    let t = g.half_open.totals;
                    if t.calls >= self.settings.permitted_in_half_open {
                        let to = if self.settings.exceeded(t) { CircuitState::Open } else { CircuitState::Closed };
                        change = Some(self.transition(&mut g, to, stamp(), Some(t.rates())));
                    }
                }
            }
        } else if rec != Rec::Ignored
            && g.epoch == ticket.period
            && matches!(g.state, CircuitState::Closed | CircuitState::MetricsOnly)
        {
            g.window.record(now, failed, slow);
            let t = g.window.totals(now);
            if g.state == CircuitState::Closed && t.calls >= self.settings.minimum_calls && self.settings.exceeded(t) {
                change = Some(self.transition(&mut g, CircuitState::Open, stamp(), Some(t.rates())));
            } else {
                let clean = g.window.is_clean();
                self.set_clean(&mut g, clean);
                self.open_fast(&mut g);
            }
        }
        drop(g);
        if let Some(c) = change {
            self.notify(&c);
        }
    }

    fn set_clean(&self, g: &mut Inner, clean: bool) {
        if g.clean != clean {
            g.clean = clean;
            self.clean.store(clean, Ordering::Release);
        }
    }

    fn open_wait(&self, trips: u32) -> Duration {
        let s = &self.settings;
        if s.wait_multiplier <= 1.0 || trips <= 1 {
            return s.wait_in_open;
        }
        let f = s.wait_multiplier.powi((trips - 1).min(1000) as i32);
        let secs = (s.wait_in_open.as_secs_f64() * f).min(1e9);
        let d = Duration::from_secs_f64(secs);
        if s.max_wait_in_open.is_zero() {
            d
        } else {
            d.min(s.max_wait_in_open)
        }
    }

    fn transition(&self, g: &mut Inner, to: CircuitState, now: Instant, rates: Option<(f64, f64)>) -> StateChange {
        let from = g.state;
        g.state = to;
        self.set_clean(g, false);
        if let Some(task) = g.expiry.take() {
            task.abort();
        }
        // Periods only need to differ between neighbours.
        g.epoch = g.epoch.wrapping_add(1);
        match to {
            CircuitState::Open => {
                g.trips = g.trips.saturating_add(1);
                g.open_until = crate::deadline::instant_after(now, self.open_wait(g.trips));
            }
            CircuitState::HalfOpen => {
                g.half_open =
                    HalfOpen { free: self.settings.permitted_in_half_open, totals: Totals::default(), since: now };
            }
            CircuitState::Closed | CircuitState::Disabled | CircuitState::MetricsOnly | CircuitState::ForcedOpen => {
                if to != CircuitState::ForcedOpen {
                    g.trips = 0;
                }
                g.window.clear(now);
            }
        }
        self.state.store(pack(g.epoch, to), Ordering::Release);
        self.metrics.state.set(to as u8 as f64);
        StateChange {
            name: self.name.clone(),
            from,
            to,
            failure_rate: rates.map(|r| r.0),
            slow_call_rate: rates.map(|r| r.1),
        }
    }

    fn notify(&self, c: &StateChange) {
        let mut labels = with_label(&self.labels, "from", c.from.as_str());
        labels.push(Label::from_static_parts("to", c.to.as_str()));
        metrics::counter!("tower_mesh_circuit_breaker_transitions_total", labels).increment(1);
        tracing::info!(
            service = %self.name,
            from = c.from.as_str(),
            to = c.to.as_str(),
            failure_rate = c.failure_rate,
            slow_call_rate = c.slow_call_rate,
            "circuit breaker state change"
        );
        for l in &self.listeners {
            l(c);
        }
    }

    /// Manual transition (from the handle). `None` when already in `to`
    /// (except `reset`, which always resets).
    pub(crate) fn manual(self: &Arc<Self>, to: CircuitState, force: bool) {
        let now = Instant::now();
        let mut g = self.lock();
        if g.state == to && !force {
            return;
        }
        if force {
            g.trips = 0;
        }
        let c = self.transition(&mut g, to, now, None);
        self.arm_expiry(&mut g);
        drop(g);
        self.notify(&c);
    }

    pub(crate) fn snapshot(&self) -> CircuitMetrics {
        let now = Instant::now();
        let mut g = self.lock();
        let change = self.expire_half_open(&mut g, now);
        let (t, min) = match g.state {
            CircuitState::HalfOpen => (g.half_open.totals, self.settings.permitted_in_half_open),
            _ => (g.window.totals(Some(now)), self.settings.minimum_calls),
        };
        let rates = (t.calls >= min && t.calls > 0).then(|| t.rates());
        let m = CircuitMetrics {
            state: g.state,
            calls: t.calls,
            failures: t.failures,
            slow_calls: t.slow,
            failure_rate: rates.map(|r| r.0),
            slow_call_rate: rates.map(|r| r.1),
            not_permitted: self.not_permitted.load(Ordering::Relaxed),
        };
        drop(g);
        if let Some(c) = change {
            self.notify(&c);
        }
        m
    }

    /// When the breaker, now open, will admit probes again.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut g = self.lock();
        let change = self.expire_half_open(&mut g, now);
        let after = (g.state == CircuitState::Open).then(|| g.open_until.saturating_duration_since(now));
        drop(g);
        if let Some(c) = change {
            self.notify(&c);
        }
        after
    }
}

fn pack(period: u32, state: CircuitState) -> u64 {
    (period as u64) << 8 | state as u8 as u64
}

fn unpack(word: u64) -> (u32, CircuitState) {
    ((word >> 8) as u32, CircuitState::from_u8(word as u8))
}
