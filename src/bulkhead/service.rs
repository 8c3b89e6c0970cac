//! The bulkhead service.

use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use super::future::ResponseFuture;
use super::shared::{Shared, Waiting};
use crate::error::BoxError;

/// Where a [`Bulkhead`] is between `poll_ready` and `call`.
enum State {
    /// No permit, not waiting.
    Idle,
    /// Waiting (up to `max_wait`) for a permit.
    Waiting(Waiting),
    /// Holding a permit for the next call.
    Permit(OwnedSemaphorePermit),
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
/// Cloning gives a service that shares the pool but does not hold the
/// original's permit.
pub struct Bulkhead<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    shared: Arc<Shared>,
    state: State,
}

impl<S> Bulkhead<S> {
    pub(crate) fn new(inner: S, semaphore: Arc<Semaphore>, shared: Arc<Shared>) -> Self {
        Bulkhead { inner, semaphore, shared, state: State::Idle }
    }

    /// Permits free in the pool right now.
    pub fn available_permits(&self) -> usize {
        self.semaphore.available_permits()
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
        Bulkhead::new(self.inner.clone(), self.semaphore.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Idle => "idle",
            State::Waiting(_) => "waiting",
            State::Permit(_) => "permit",
            State::Rejected(_) => "rejected",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .field("available_permits", &self.semaphore.available_permits())
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Permit(_) => return self.inner.poll_ready(cx).map_err(Into::into),
                State::Idle => match self.semaphore.clone().try_acquire_owned() {
                    Ok(permit) => self.state = State::Permit(permit),
                    Err(_) if self.shared.max_wait.is_zero() => {
                        self.state = State::Rejected(Duration::ZERO);
                        return Poll::Ready(Ok(()));
                    }
                    Err(_) => self.state = State::Waiting(self.shared.wait(&self.semaphore)),
                },
                State::Waiting(waiting) => {
                    let permit = ready!(waiting.acquire.as_mut().poll(cx));
                    let waited = self.shared.waited(waiting.started);
                    self.state = match permit {
                        Some(permit) => State::Permit(permit),
                        None => State::Rejected(waited),
                    };
                }
                State::Rejected(_) => {
                    // Polled again before `call`: take a permit if one came
                    // free meanwhile, else stay rejected.
                    match self.semaphore.clone().try_acquire_owned() {
                        Ok(permit) => self.state = State::Permit(permit),
                        Err(_) => return Poll::Ready(Ok(())),
                    }
                }
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Permit(permit) => ResponseFuture::called(self.inner.call(req), self.shared.in_flight(permit)),
            State::Rejected(waited) => ResponseFuture::rejected(self.shared.reject(waited)),
            State::Idle | State::Waiting(_) => panic!("Bulkhead::call without poll_ready returning Ready first"),
        }
    }
}
