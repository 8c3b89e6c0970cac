//! The end of half-open's max wait: on time by a task, or when next observed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::{CircuitState, Inner, Shared, StateChange};

impl Shared {
    /// If the breaker is half-open and its max wait has passed by `now`,
    /// re-open it as of the end of the max wait (the open wait counts from
    /// then), as the expiry timer does; the change to notify.
    pub(super) fn expire_half_open(&self, g: &mut Inner, now: Instant) -> Option<StateChange> {
        let max = self.settings.max_wait_in_half_open;
        if g.state != CircuitState::HalfOpen || max.is_zero() {
            return None;
        }
        let deadline = g.half_open.since + max;
        if now < deadline {
            return None;
        }
        let t = g.half_open.totals;
        let rates = (t.calls > 0).then(|| t.rates());
        Some(self.transition(g, CircuitState::Open, deadline, rates))
    }

    /// Just entered half-open: with a max wait, arm a task that re-opens the
    /// breaker when it ends, so the state, the metrics and the listeners see
    /// the change on time even when no call comes. Without a tokio runtime
    /// (or timers), the change is applied when the breaker is next used or
    /// observed ([`Shared::observed_state`]), as of the same moment.
    pub(super) fn arm_expiry(self: &Arc<Self>, g: &mut Inner) {
        let max = self.settings.max_wait_in_half_open;
        if g.state != CircuitState::HalfOpen || max.is_zero() {
            return;
        }
        let Ok(handle) = Handle::try_current() else { return };
        if g.no_timers == Some(handle.id()) {
            return;
        }
        // `sleep_until` panics in a runtime built without timers (there is
        // no other way to ask): that runtime is remembered.
        let deadline = g.half_open.since + max;
        let Ok(sleep) = catch_unwind(AssertUnwindSafe(|| tokio::time::sleep_until(deadline))) else {
            g.no_timers = Some(handle.id());
            return;
        };
        let (weak, period) = (Arc::downgrade(self), g.epoch);
        let task = handle.spawn(async move {
            sleep.await;
            if let Some(shared) = weak.upgrade() {
                shared.expire_on_timer(period);
            }
        });
        if let Some(old) = g.expiry.replace(task.abort_handle()) {
            old.abort();
        }
    }

    /// The expiry task of half-open period `period` woke.
    pub(super) fn expire_on_timer(&self, period: u32) {
        let now = Instant::now();
        let mut g = self.lock();
        if g.epoch != period {
            return;
        }
        g.expiry = None;
        let change = self.expire_half_open(&mut g, now);
        drop(g);
        if let Some(c) = change {
            self.notify(&c);
        }
    }
}
