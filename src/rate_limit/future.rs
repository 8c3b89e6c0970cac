//! The response future of a rate-limited call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::error::{RateLimited, Reason};
use super::limiter::{Acquire, Limiter, Shared};
use crate::error::BoxError;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): the inner call
    /// when admitted at once (no allocation), a rejection, or — when the
    /// call waits for a permit or a shared store decides — a boxed wait
    /// that calls the inner service once admitted.
    pub struct ResponseFuture<S, Req, L>
    where
        S: Service<Req>,
        L: Limiter<Req>,
    {
        #[pin]
        state: State<S, Req, L>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<S, Req, L>
    where
        S: Service<Req>,
        L: Limiter<Req>,
    {
        Called { #[pin] fut: S::Future },
        Slow { slow: Pin<Box<Slow<S, Req, L>>> },
        Rejected { error: Option<RateLimited> },
    }
}

impl<S: Service<Req>, Req, L: Limiter<Req>> ResponseFuture<S, Req, L> {
    pub(crate) fn called(fut: S::Future) -> Self {
        ResponseFuture { state: State::Called { fut } }
    }

    pub(crate) fn rejected(error: RateLimited) -> Self {
        ResponseFuture { state: State::Rejected { error: Some(error) } }
    }

    pub(crate) fn slow(slow: Slow<S, Req, L>) -> Self {
        ResponseFuture { state: State::Slow { slow: Box::pin(slow) } }
    }
}

impl<S: Service<Req>, Req, L: Limiter<Req>> fmt::Debug for ResponseFuture<S, Req, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Called { .. } => f.write_str("ResponseFuture::Called"),
            State::Slow { .. } => f.write_str("ResponseFuture::Waiting"),
            State::Rejected { error } => f.debug_tuple("ResponseFuture::Rejected").field(error).finish(),
        }
    }
}

impl<S, Req, L> Future for ResponseFuture<S, Req, L>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    L: Limiter<Req>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let fut = match state.as_mut().project() {
                Proj::Called { fut } => return fut.poll(cx).map_err(Into::into),
                Proj::Rejected { error } => {
                    let e = error.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(e.into()));
                }
                Proj::Slow { slow } => match ready!(slow.as_mut().poll(cx)) {
                    Ok(fut) => fut,
                    Err(e) => return Poll::Ready(Err(e.into())),
                },
            };
            state.set(State::Called { fut });
        }
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<P> {
        // A shared store is deciding.
        Ask { #[pin] fut: P },
        // Waiting for the permit the last decision said would come.
        Sleep { #[pin] sleep: Sleep },
        // Admitted.
        Go,
    }
}

pin_project! {
    /// A call that is not admitted yet: it holds the ready inner service
    /// and the request, and no permit (dropping it takes nothing from the
    /// limit).
    pub(crate) struct Slow<S, Req, L>
    where
        L: Limiter<Req>,
    {
        limiter: Arc<L>,
        shared: Arc<Shared>,
        service: S,
        request: Option<Req>,
        started: Instant,
        // The last instant a wait may end: `max_wait` from the call, or the
        // enclosing deadline if sooner.
        until: Instant,
        #[pin]
        step: Step<L::Pending>,
    }
}

impl<S, Req, L: Limiter<Req>> Slow<S, Req, L> {
    pub(crate) fn asking(
        limiter: Arc<L>,
        shared: Arc<Shared>,
        service: S,
        request: Req,
        until: Instant,
        fut: L::Pending,
    ) -> Self {
        let started = Instant::now();
        Slow { limiter, shared, service, request: Some(request), started, until, step: Step::Ask { fut } }
    }

    pub(crate) fn sleeping(
        limiter: Arc<L>,
        shared: Arc<Shared>,
        service: S,
        request: Req,
        until: Instant,
        wake: Instant,
    ) -> Self {
        let started = Instant::now();
        let sleep = tokio::time::sleep_until(wake);
        Slow { limiter, shared, service, request: Some(request), started, until, step: Step::Sleep { sleep } }
    }
}

/// Whether a call denied with `e` waits for its permit, given the last
/// instant it may wait until.
pub(crate) fn may_wait(e: &RateLimited, now: Instant, until: Instant) -> Option<Instant> {
    let wake = crate::deadline::instant_after(now, e.retry_after());
    (e.reason() == Reason::OverLimit && wake <= until).then_some(wake)
}

impl<S, Req, L> Future for Slow<S, Req, L>
where
    S: Service<Req>,
    L: Limiter<Req>,
{
    type Output = Result<S::Future, RateLimited>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let decided = match this.step.as_mut().project() {
                StepProj::Ask { fut } => ready!(fut.poll(cx)),
                StepProj::Sleep { sleep } => {
                    ready!(sleep.poll(cx));
                    let req = this.request.as_ref().expect("Slow polled after completion");
                    match this.limiter.acquire(req) {
                        Acquire::Admitted => Ok(()),
                        Acquire::Denied(e) => Err(e),
                        Acquire::Pending(fut) => {
                            this.step.set(Step::Ask { fut });
                            continue;
                        }
                    }
                }
                StepProj::Go => unreachable!("Slow polled after completion"),
            };
            match decided {
                Ok(()) => {
                    this.step.set(Step::Go);
                    this.shared.admitted();
                    if *this.started + std::time::Duration::from_micros(1) <= Instant::now() {
                        this.shared.record_wait(this.started.elapsed());
                    }
                    let req = this.request.take().expect("Slow polled after completion");
                    return Poll::Ready(Ok(this.service.call(req)));
                }
                Err(e) => match may_wait(&e, Instant::now(), *this.until) {
                    Some(wake) => this.step.set(Step::Sleep { sleep: tokio::time::sleep_until(wake) }),
                    None => {
                        this.step.set(Step::Go);
                        this.shared.rejected(&e);
                        return Poll::Ready(Err(e));
                    }
                },
            }
        }
    }
}
