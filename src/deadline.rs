//! The overall deadline of a call, visible to every layer beneath the one that
//! set it.
//!
//! [`TimeoutLayer`](crate::timeout::TimeoutLayer) sets a [`Deadline`] and
//! passes it on explicitly, in the request: [`DeadlineCarrier::set_deadline`]
//! (for `http::Request`s, the request's extensions), so it survives a hop to
//! another task (a `tower::buffer::Buffer`, a spawned task) and a retry layer
//! below never sleeps past it and a per-attempt timeout never outlives it.
//! While the inner service is called and polled the deadline is also
//! [current](Deadline::current) for the task: that is how it reaches request
//! types that cannot carry one, and code that has no request at hand.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request};
use pin_project_lite::pin_project;
use tokio::time::Instant;

// The deadline current on this thread. `DeadlineScope` sets it around every
// poll of the future it wraps (and restores the previous value after), so it
// follows the task exactly as a tokio task-local would; a `Copy` value in a
// const-initialised `Cell` makes that a couple of plain loads and stores.
// The layers do not talk to each other through it: each reads the deadline
// of a call from its request ([`of`]), where a timeout above put it.
thread_local! {
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Restores the previous current deadline when dropped (also on unwind).
pub(crate) struct Restore(Option<Deadline>);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

#[inline]
pub(crate) fn enter(deadline: Deadline) -> Restore {
    Restore(CURRENT.with(|c| c.replace(Some(deadline))))
}

pin_project! {
    /// A future polled with a [`Deadline`] current: see [`Deadline::scope`].
    pub struct DeadlineScope<F> {
        #[pin]
        inner: F,
        deadline: Deadline,
    }
}

impl<F> fmt::Debug for DeadlineScope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineScope").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}

impl<F: Future> Future for DeadlineScope<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _restore = enter(*this.deadline);
        this.inner.poll(cx)
    }
}

/// How far away a duration too long for an `Instant` ends (as tokio's
/// timers do): about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + after`, without the panic of `Instant + Duration` on overflow: a
/// duration too long for an `Instant` (a configured "forever", a huge
/// `Retry-After`) ends [`FAR_FUTURE`] from `now`.
pub(crate) fn instant_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now)
}

/// A point in time by which a call must be complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// A deadline `after` from now (a duration too long for an `Instant`,
    /// such as `Duration::MAX`, is about 30 years from now).
    pub fn after(after: Duration) -> Self {
        Deadline(instant_after(Instant::now(), after))
    }

    /// When it is.
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of `self` and `other`.
    pub fn min(self, other: Option<Deadline>) -> Deadline {
        match other {
            Some(o) if o < self => o,
            _ => self,
        }
    }

    /// The deadline of the enclosing [`TimeoutLayer`](crate::timeout::TimeoutLayer)
    /// on this task, if any.
    #[inline]
    pub fn current() -> Option<Deadline> {
        CURRENT.with(Cell::get)
    }

    /// Run `f` with `self` as the current deadline (the earlier one wins if a
    /// deadline is already current).
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        self.min(Deadline::current()).sync_scope_exact(f)
    }

    /// Poll `fut` with `self` as the current deadline (the earlier one wins if a
    /// deadline is already current).
    pub fn scope<F: Future>(self, fut: F) -> DeadlineScope<F> {
        self.min(Deadline::current()).scope_exact(fut)
    }

    /// [`sync_scope`](Deadline::sync_scope) for a caller that already took the
    /// earliest of `self` and [`Deadline::current`]: skips reading it again.
    #[inline]
    pub(crate) fn sync_scope_exact<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = enter(self);
        f()
    }

    /// [`scope`](Deadline::scope) for a caller that already took the earliest of
    /// `self` and [`Deadline::current`].
    #[inline]
    pub(crate) fn scope_exact<F: Future>(self, fut: F) -> DeadlineScope<F> {
        DeadlineScope { inner: fut, deadline: self }
    }
}

/// The deadline a call made now with `req` must meet: the earlier of the one
/// the request carries and the task's [current](Deadline::current) one.
#[cfg(any(feature = "timeout", feature = "retry"))]
#[inline]
pub(crate) fn of<R: DeadlineCarrier + ?Sized>(req: &R) -> Option<Deadline> {
    match req.deadline() {
        Some(carried) => Some(carried.min(Deadline::current())),
        None => Deadline::current(),
    }
}

/// Request types that can carry a [`Deadline`] to the services beneath.
///
/// Implemented for `http::Request<B>` (the deadline goes in the extensions and,
/// on request, as a `grpc-timeout` header). Any other request type can opt in
/// with an empty impl — the deadline then still travels as the task's
/// [`Deadline::current`]:
///
/// ```
/// struct Event;
/// impl tower_mesh::deadline::DeadlineCarrier for Event {}
/// ```
pub trait DeadlineCarrier {
    /// The deadline the request already carries.
    fn deadline(&self) -> Option<Deadline> {
        None
    }

    /// Attach a deadline.
    fn set_deadline(&mut self, deadline: Deadline) {
        let _ = deadline;
    }

    /// Tell the server how long it has, as gRPC's `grpc-timeout` header.
    fn set_grpc_timeout(&mut self, remaining: Duration) {
        let _ = remaining;
    }
}

impl<B> DeadlineCarrier for Request<B> {
    fn deadline(&self) -> Option<Deadline> {
        self.extensions().get::<Deadline>().copied()
    }

    fn set_deadline(&mut self, deadline: Deadline) {
        // In place when there is one already (a per-attempt timeout below a
        // total one): no new allocation.
        match self.extensions_mut().get_mut::<Deadline>() {
            Some(carried) => *carried = deadline.min(Some(*carried)),
            None => {
                self.extensions_mut().insert(deadline);
            }
        }
    }

    fn set_grpc_timeout(&mut self, remaining: Duration) {
        self.headers_mut().insert("grpc-timeout", encode_grpc_timeout(remaining));
    }
}

macro_rules! plain_carrier {
    ($($t:ty),*) => { $(impl DeadlineCarrier for $t {})* };
}
plain_carrier!((), bool, u8, u16, u32, u64, usize, i32, i64, String, &'static str, Vec<u8>, bytes::Bytes);

/// Encode a duration as a `grpc-timeout` value: at most 8 digits and a unit,
/// in the finest unit that fits (rounded up, so the server never gets more
/// time than the client).
pub fn encode_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        let v = nanos.div_ceil(scale);
        if v <= MAX {
            return HeaderValue::from_str(&format!("{v}{unit}")).expect("ascii");
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_long_for_an_instant_ends_far_away() {
        let now = Instant::now();
        assert_eq!(instant_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert_eq!(instant_after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(instant_after(now, Duration::from_secs(u64::MAX)), now + FAR_FUTURE);
        // Was `overflow when adding duration to instant`.
        assert!(Deadline::after(Duration::MAX) > Deadline::at(now));
    }

    #[test]
    fn grpc_timeout_encoding() {
        assert_eq!(encode_grpc_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(encode_grpc_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(u64::MAX)), "99999999H");
    }

    #[tokio::test(start_paused = true)]
    async fn scopes_nest_to_the_earliest() {
        assert_eq!(Deadline::current(), None);
        let outer = Deadline::after(Duration::from_secs(5));
        let inner = Deadline::after(Duration::from_secs(10));
        let seen = outer.scope(async move { inner.scope(async { Deadline::current() }).await }).await;
        assert_eq!(seen, Some(outer));
        let seen = outer.sync_scope(Deadline::current);
        assert_eq!(seen, Some(outer));
        assert_eq!(Deadline::current(), None, "restored after the scopes");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_task_not_the_thread() {
        let d = Deadline::after(Duration::from_secs(1));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let scoped = tokio::spawn(d.scope(async move {
            let before = Deadline::current();
            rx.await.unwrap(); // yields: other tasks run on this thread meanwhile
            (before, Deadline::current())
        }));
        let other = tokio::spawn(async { Deadline::current() });
        assert_eq!(other.await.unwrap(), None);
        tx.send(()).unwrap();
        assert_eq!(scoped.await.unwrap(), (Some(d), Some(d)));
    }

    #[test]
    fn a_panic_inside_a_scope_restores_the_previous_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _g = rt.enter();
        let d = Deadline::after(Duration::from_secs(1));
        let r = std::panic::catch_unwind(|| d.sync_scope(|| panic!("boom")));
        assert!(r.is_err());
        assert_eq!(Deadline::current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn http_requests_carry_the_earliest_deadline() {
        let mut req = Request::new(());
        let a = Deadline::after(Duration::from_secs(1));
        req.set_deadline(Deadline::after(Duration::from_secs(3)));
        req.set_deadline(a);
        req.set_deadline(Deadline::after(Duration::from_secs(9)));
        assert_eq!(req.deadline(), Some(a));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(a.remaining(), Duration::from_millis(600));
        req.set_grpc_timeout(a.remaining());
        assert_eq!(req.headers()["grpc-timeout"], "600000u");
    }
}
