//! The response future of the adaptive concurrency service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use super::error::ConcurrencyLimited;
use super::limiter::Permit;
use crate::classify::{is_rejection, Classify, Outcome};
use crate::error::BoxError;

pin_project! {
    /// Response future of [`AdaptiveConcurrency`](super::AdaptiveConcurrency):
    /// the inner future and the slot it holds (given back with a sample when
    /// the call completes, without one when the future is dropped), or a
    /// rejection.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<F, C> {
        Called {
            #[pin]
            inner: F,
            permit: Option<Permit<C>>,
        },
        Rejected {
            error: Option<ConcurrencyLimited>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(inner: F, permit: Permit<C>) -> Self {
        ResponseFuture { state: State::Called { inner, permit: Some(permit) } }
    }

    pub(crate) fn rejected(error: ConcurrencyLimited) -> Self {
        ResponseFuture { state: State::Rejected { error: Some(error) } }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Called { .. } => f.write_str("ResponseFuture::Called"),
            State::Rejected { error } => f.debug_tuple("ResponseFuture::Rejected").field(error).finish(),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Called { inner, permit } => {
                let result = ready!(inner.poll(cx));
                let permit = permit.take().expect("ResponseFuture polled after completion");
                let outcome = permit.shared().classifier.classify(result.as_ref());
                let result = result.map_err(Into::into);
                let dropped = match outcome {
                    // The stack's own rejections from below are this
                    // process's load, not the dependency's latency.
                    Outcome::Failure(_) if result.as_ref().is_err_and(is_rejection) => None,
                    Outcome::Failure(_) => Some(true),
                    // The latency is known at the response head; a deferred
                    // outcome (gRPC trailers) counts as a success.
                    Outcome::Success | Outcome::Deferred => Some(false),
                    Outcome::Ignored | Outcome::Cancelled => None,
                };
                permit.finish(dropped);
                Poll::Ready(result)
            }
            Proj::Rejected { error } => {
                let e = error.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Err(e.into()))
            }
        }
    }
}
