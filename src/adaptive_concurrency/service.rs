//! The adaptive concurrency service.

use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use super::limiter::{Permit, Shared, Waiting};
use crate::classify::{Classify, ResultClassifier};
use crate::error::BoxError;

/// The slow path: no slot was free at the last `poll_ready`.
enum Slow {
    /// Not on the slow path.
    Idle,
    /// Waiting (up to `max_wait`) for a slot.
    Waiting(Waiting),
    /// No slot within `max_wait`: the next call is rejected.
    Rejected(Duration),
}

/// Service made by [`AdaptiveConcurrencyLayer`](super::AdaptiveConcurrencyLayer):
/// lets at most the current limit of calls run at once through all the
/// services of one layer, and feeds each call's latency and outcome to the
/// algorithm that moves the limit.
///
/// As with the [bulkhead](crate::bulkhead::Bulkhead), the slot is taken in
/// `poll_ready` and moves into the response future on `call`; when there is
/// none, `poll_ready` still returns `Ready(Ok(()))` and the call fails at once
/// with [`ConcurrencyLimited`](super::ConcurrencyLimited). Cloning gives a
/// service that shares the limit but not the original's slot.
pub struct AdaptiveConcurrency<S, C = ResultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
    permit: Option<Permit<C>>,
    slow: Slow,
}

impl<S, C> AdaptiveConcurrency<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C>>) -> Self {
        AdaptiveConcurrency { inner, shared, permit: None, slow: Slow::Idle }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.limiter.limit()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one (and giving back any slot it holds).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for AdaptiveConcurrency<S, C> {
    fn clone(&self) -> Self {
        AdaptiveConcurrency::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug, C> fmt::Debug for AdaptiveConcurrency<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (&self.permit, &self.slow) {
            (Some(_), _) => "permit",
            (None, Slow::Idle) => "idle",
            (None, Slow::Waiting(_)) => "waiting",
            (None, Slow::Rejected(_)) => "rejected",
        };
        f.debug_struct("AdaptiveConcurrency")
            .field("inner", &self.inner)
            .field("limiter", &self.shared.limiter)
            .field("state", &state)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for AdaptiveConcurrency<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            match self.shared.limiter.try_acquire() {
                Some(in_flight) => {
                    self.permit = Some(Permit::new(self.shared.clone(), in_flight));
                    if !matches!(self.slow, Slow::Idle) {
                        self.slow = Slow::Idle;
                    }
                }
                None => {
                    ready!(self.poll_slow(cx));
                    if self.permit.is_none() {
                        // Rejected: the inner service's readiness does not matter.
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
            Some(permit) => {
                let permit = permit.start();
                ResponseFuture::called(self.inner.call(req), permit)
            }
            None => self.reject(),
        }
    }
}

impl<S, C> AdaptiveConcurrency<S, C> {
    /// No slot was free: wait for one (up to `max_wait`) or decide to reject.
    #[cold]
    fn poll_slow(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limiter = &self.shared.limiter;
        loop {
            match &mut self.slow {
                Slow::Idle => match (!limiter.max_wait.is_zero()).then(|| limiter.wait()).flatten() {
                    Some(waiting) => self.slow = Slow::Waiting(waiting),
                    None => {
                        self.slow = Slow::Rejected(Duration::ZERO);
                        return Poll::Ready(());
                    }
                },
                Slow::Waiting(waiting) => {
                    let acquired = ready!(waiting.acquire.as_mut().poll(cx));
                    match acquired {
                        Some(in_flight) => {
                            self.permit = Some(Permit::new(self.shared.clone(), in_flight));
                            self.slow = Slow::Idle;
                        }
                        None => self.slow = Slow::Rejected(waiting.started.elapsed()),
                    }
                    return Poll::Ready(());
                }
                Slow::Rejected(_) => return Poll::Ready(()),
            }
        }
    }

    #[cold]
    fn reject<F>(&mut self) -> ResponseFuture<F, C> {
        match std::mem::replace(&mut self.slow, Slow::Idle) {
            Slow::Rejected(waited) => ResponseFuture::rejected(self.shared.limiter.reject(waited)),
            _ => panic!("AdaptiveConcurrency::call without poll_ready returning Ready first"),
        }
    }
}
