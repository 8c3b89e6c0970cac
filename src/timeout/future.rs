//! Response future of the timeout service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::error::TimeoutKind;
use super::layer::Reporter;
use crate::deadline::Deadline;
use crate::error::BoxError;

pin_project! {
    /// Response future of [`Timeout`](super::Timeout): the inner future,
    /// polled with the call's [`Deadline`] current, raced against a timer.
    ///
    /// The timer is made only when the inner future first returns `Pending`:
    /// a call that completes at its first poll never touches the runtime's
    /// timer (a `Sleep` takes a reference to the runtime handle when made,
    /// and registers only when polled, so the deadline is the same either way).
    /// It is part of the future, as in tower's `Timeout`: no call allocates.
    pub struct ResponseFuture<F> {
        // Polled with the call's deadline (the timer's) current.
        #[pin]
        response: F,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Deadline,
        kind: TimeoutKind,
        after: Duration,
        reporter: Reporter,
    }
}

impl<F: Future> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(deadline: Deadline, response: F, kind: TimeoutKind, after: Duration, reporter: Reporter) -> Self {
        ResponseFuture { response, sleep: None, deadline, kind, after, reporter }
    }
}

impl<F> ResponseFuture<F> {
    /// What a body bound by the same deadline needs: the deadline, the kind
    /// and timeout its error reports, and the reporter.
    pub(crate) fn body_timer(&self) -> (tokio::time::Instant, TimeoutKind, Duration, Reporter) {
        (self.deadline.instant(), self.kind, self.after, self.reporter.clone())
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("timeout", &self.reporter)
            .field("kind", &self.kind)
            .field("after", &self.after)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let deadline = *this.deadline;
        let polled = {
            let _scope = crate::deadline::enter(deadline);
            this.response.poll(cx)
        };
        if let Poll::Ready(res) = polled {
            return Poll::Ready(res.map_err(Into::into));
        }
        let mut sleep = this.sleep;
        if sleep.is_none() {
            sleep.set(Some(tokio::time::sleep_until(deadline.instant())));
        }
        match sleep.as_pin_mut().expect("the timer was just set").poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(this.reporter.elapsed(*this.kind, *this.after).into())),
        }
    }
}
