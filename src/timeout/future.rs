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
    /// Nor is it made while a timeout inside is waiting with a timer that
    /// fires by this deadline (a per-attempt timeout under a total one).
    pub struct ResponseFuture<F> {
        // Polled with the call's deadline (the timer's) current.
        #[pin]
        response: F,
        // Behind a pointer: a `Sleep` is about 110 bytes, and every layer
        // above moves this future as it wraps it, on every call; only a call
        // that waits allocates it (and then registers it, which costs more).
        sleep: Option<Pin<Box<Sleep>>>,
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
        let frame = crate::deadline::enter_poll(deadline);
        let polled = this.response.poll(cx);
        let (enclosing, covered) = (frame.enclosing(), frame.covered());
        drop(frame);
        if let Poll::Ready(res) = polled {
            return Poll::Ready(res.map_err(Into::into));
        }
        let sleep = this.sleep;
        if sleep.is_none() {
            if covered {
                // A timeout inside (a per-attempt one) is waiting with a timer
                // that fires by our deadline and wakes this task: when it
                // fires, that timeout fails the call, or the next poll finds
                // nothing covering and makes our own timer. So a call whose
                // attempt is timed registers one timer, not two.
                crate::deadline::report_covered(deadline, enclosing);
                return Poll::Pending;
            }
            *sleep = Some(Box::pin(tokio::time::sleep_until(deadline.instant())));
        }
        match sleep.as_mut().expect("the timer was just set").as_mut().poll(cx) {
            Poll::Pending => {
                crate::deadline::report_covered(deadline, enclosing);
                Poll::Pending
            }
            Poll::Ready(()) => Poll::Ready(Err(this.reporter.elapsed(*this.kind, *this.after).into())),
        }
    }
}
