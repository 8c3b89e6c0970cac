//! The rate limit service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::{may_wait, ResponseFuture, Slow};
use super::limiter::{Acquire, Limiter, LocalLimiter, Shared};
use crate::deadline::Deadline;
use crate::error::BoxError;

/// Service made by [`RateLimitLayer`](super::RateLimitLayer) (and the keyed
/// and shared variants): admits a call when its [`Limiter`] has a permit,
/// else waits up to `max_wait` for one, else fails the call with
/// [`RateLimited`](super::RateLimited).
///
/// The permit is taken in `call`, not in `poll_ready` (which only asks the
/// inner service): a service made ready and dropped takes nothing from the
/// limit, and a rejected call is an error of that call, not of the service,
/// so a `Buffer` or `Balance` above keeps working. A call that waits moves
/// the ready inner service into its future and leaves a clone in its place
/// (as tower's `Buffer` worker does), hence `S: Clone`. Dropping a waiting
/// future cancels the wait; no permit is held while waiting. A wait never
/// goes past the deadline of an enclosing [`Deadline`] scope.
///
/// Why `Clone` and not waiting in `poll_ready` (tower's `RateLimit`): the
/// decision needs the request (its key), and a decision from Redis takes a
/// round trip; a service that stayed unready meanwhile would serialise the
/// requests of an HTTP/2 connection. Where the stacks put it, `Clone` is
/// already required: by the retry layer above it (client stack), and by
/// axum's `Router::layer`, tonic's `Server::layer` and hyper-util's
/// `TowerToHyperService` (server stack).
pub struct RateLimit<S, L = LocalLimiter> {
    inner: S,
    limiter: Arc<L>,
    shared: Arc<Shared>,
}

impl<S, L> RateLimit<S, L> {
    pub(crate) fn new(inner: S, limiter: Arc<L>, shared: Arc<Shared>) -> Self {
        RateLimit { inner, limiter, shared }
    }

    /// The limiter.
    pub fn limiter(&self) -> &L {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the rate limiter.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, L> Clone for RateLimit<S, L> {
    fn clone(&self) -> Self {
        RateLimit { inner: self.inner.clone(), limiter: self.limiter.clone(), shared: self.shared.clone() }
    }
}

impl<S: fmt::Debug, L: fmt::Debug> fmt::Debug for RateLimit<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("max_wait", &self.shared.max_wait)
            .finish()
    }
}

impl<S, L, Req> Service<Req> for RateLimit<S, L>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    L: Limiter<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, L>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.limiter.acquire(&req) {
            Acquire::Admitted => {
                self.shared.admitted();
                ResponseFuture::called(self.inner.call(req))
            }
            Acquire::Denied(e) => self.denied(e, req),
            Acquire::Pending(fut) => {
                let until = self.until(Instant::now());
                let service = self.take_ready();
                ResponseFuture::slow(Slow::asking(self.limiter.clone(), self.shared.clone(), service, req, until, fut))
            }
        }
    }
}

impl<S: Clone, L> RateLimit<S, L> {
    /// The last instant a call made now may wait until.
    fn until(&self, now: Instant) -> Instant {
        // A `max_wait` too long for an `Instant` waits as long as needed.
        let until = crate::deadline::instant_after(now, self.shared.max_wait);
        match Deadline::current() {
            Some(d) => until.min(d.instant()),
            None => until,
        }
    }

    /// The ready inner service, for a call that waits; a clone takes its place.
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }

    #[cold]
    fn denied<Req>(&mut self, e: super::RateLimited, req: Req) -> ResponseFuture<S, Req, L>
    where
        S: Service<Req>,
        L: Limiter<Req>,
    {
        let now = Instant::now();
        if !self.shared.max_wait.is_zero() {
            if let Some(wake) = may_wait(&e, now, self.until(now)) {
                let until = self.until(now);
                let service = self.take_ready();
                return ResponseFuture::slow(Slow::sleeping(
                    self.limiter.clone(),
                    self.shared.clone(),
                    service,
                    req,
                    until,
                    wake,
                ));
            }
        }
        self.shared.rejected(&e);
        ResponseFuture::rejected(e)
    }
}
