//! The bulkhead service.

use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use super::pool::{BulkheadPermit, Pool};
use super::shared::{Shared, Waiting};
use crate::error::BoxError;

/// The slow path of a [`Bulkhead`]: no permit was free at the last `poll_ready`.
enum Slow {
    /// Not on the slow path.
    Idle,
    /// Waiting (up to `max_wait`) for a permit.
    Waiting(Waiting),
    /// No permit within `max_wait`: the next call is rejected.
    Rejected(Duration),
}

/// Service made by [`BulkheadLayer`](super::BulkheadLayer): limits how many
/// calls run at once through all the services of one layer.
///
/// The permit is acquired in `poll_ready` (as tower's `ConcurrencyLimit`
/// does) and moves into the response future on `call`. When no permit is free
/// within `max_wait`, `poll_ready` still returns `Ready(Ok(()))` and the next
/// `call` returns a future that fails at once with
/// [`BulkheadFull`](super::BulkheadFull) — a rejected call is an error of that
/// call, not of the service, so `Buffer` or `Balance` above keep working.
///
/// If `poll_ready` is called again after it decided to reject (before
/// `call`), it tries once more to take a free permit without waiting.
///
/// Cloning gives a service that shares the pool but does not hold the
/// original's permit.
pub struct Bulkhead<S> {
    inner: S,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    /// The permit for the next call (the fast path only touches this).
    permit: Option<BulkheadPermit>,
    slow: Slow,
}

impl<S> Bulkhead<S> {
    pub(crate) fn new(inner: S, pool: Arc<Pool>, shared: Arc<Shared>) -> Self {
        Bulkhead { inner, pool, shared, permit: None, slow: Slow::Idle }
    }

    /// Permits free in the pool right now.
    pub fn available_permits(&self) -> usize {
        self.pool.available_permits()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the bulkhead (and releasing any permit it holds).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        // A held permit belongs to this service's next call only.
        Bulkhead::new(self.inner.clone(), self.pool.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (&self.permit, &self.slow) {
            (Some(_), _) => "permit",
            (None, Slow::Idle) => "idle",
            (None, Slow::Waiting(_)) => "waiting",
            (None, Slow::Rejected(_)) => "rejected",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .field("available_permits", &self.pool.available_permits())
            .field("state", &state)
            .finish()
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            match self.pool.try_acquire() {
                Some(permit) => {
                    self.permit = Some(permit);
                    if !matches!(self.slow, Slow::Idle) {
                        self.slow = Slow::Idle;
                    }
                }
                None => {
                    ready!(self.poll_slow(cx));
                    if self.permit.is_none() {
                        // Rejected: the next call fails without reaching the
                        // inner service, so its readiness does not matter.
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.permit.take() {
            Some(permit) => ResponseFuture::called(self.inner.call(req), self.shared.in_flight(permit)),
            None => self.reject(),
        }
    }
}

impl<S> Bulkhead<S> {
    /// No permit was free: wait for one (up to `max_wait`) or decide to
    /// reject. `Ready` with `self.permit` set, or `Ready` with `self.slow`
    /// `Rejected`.
    #[cold]
    fn poll_slow(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.slow {
                Slow::Idle if self.shared.max_wait.is_zero() => {
                    self.slow = Slow::Rejected(Duration::ZERO);
                    return Poll::Ready(());
                }
                Slow::Idle => self.slow = Slow::Waiting(self.shared.wait(&self.pool)),
                Slow::Waiting(waiting) => {
                    let permit = ready!(waiting.acquire.as_mut().poll(cx));
                    let waited = self.shared.waited(waiting.started);
                    match permit {
                        Some(permit) => {
                            self.permit = Some(permit);
                            self.slow = Slow::Idle;
                        }
                        None => self.slow = Slow::Rejected(waited),
                    }
                    return Poll::Ready(());
                }
                // Polled again after a rejection (and the fast path found no
                // permit either): stay rejected.
                Slow::Rejected(_) => return Poll::Ready(()),
            }
        }
    }

    #[cold]
    fn reject<F>(&mut self) -> ResponseFuture<F> {
        match std::mem::replace(&mut self.slow, Slow::Idle) {
            Slow::Rejected(waited) => ResponseFuture::rejected(self.shared.reject(waited)),
            _ => panic!("Bulkhead::call without poll_ready returning Ready first"),
        }
    }
}
