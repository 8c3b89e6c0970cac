use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::budget::BudgetToken;
use super::error::{after_retry, as_error, LastFailure};
use super::request::local_pushback;
use super::service::RetryShared;
use super::{AttemptFailure, Pushback, RetryRequests};
use crate::classify::{Classify, FailureKind, Outcome};
use crate::deadline::Deadline;

pin_project! {
    #[project = StateProj]
    enum State<F, S> {
        // An attempt is in flight.
        Calling { #[pin] fut: F },
        // A retry is due: waiting out its backoff, then for the clone of the
        // service it goes through to be ready. Boxed: only a retried call
        // pays for the timer and the service, and every other call's future
        // stays small (futures are moved as they are built).
        Retrying { retry: Pin<Box<Pending<S>>> },
    }
}

pin_project! {
    struct Pending<S> {
        #[pin]
        sleep: Sleep,
        slept: bool,
        service: S,
    }
}

pin_project! {
    /// Response future of [`Retry`](super::Retry): a state machine of attempt,
    /// backoff sleep and readiness. Only a retried call allocates (its
    /// backoff timer and the clone of the service the retry goes through).
    ///
    /// Dropping it during a backoff gives the retry it took back to the budget.
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, S>,
        // A copy of the request: the next retry's (`None`: not retryable, or
        // no retry left). During a backoff it is the request about to be sent.
        copy: Option<Req>,
        // How the last attempt failed, once one was retried: kept for the
        // error of a retry the stack's own protection rejects. Boxed, like
        // the backoff state: only a retried call pays for it.
        last: Option<Box<LastFailure<S::Error>>>,
        token: Option<BudgetToken>,
        retries: u32,
        previous_delay: Duration,
        shared: Arc<RetryShared<S, C, P>>,
    }
}

impl<S: Service<Req>, Req, C, P> ResponseFuture<S, Req, C, P> {
    #[inline]
    pub(crate) fn new(fut: S::Future, copy: Option<Req>, shared: Arc<RetryShared<S, C, P>>) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            copy,
            last: None,
            token: None,
            retries: 0,
            previous_delay: Duration::ZERO,
            shared,
        }
    }
}

impl<S: Service<Req>, Req, C, P> fmt::Debug for ResponseFuture<S, Req, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retries", &self.retries)
            .field("retryable", &self.copy.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req> + Clone,
    S::Error: 'static,
    C: Classify<S::Response, S::Error>,
    P: RetryRequests<Req, S::Response>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx));
                    let s = &this.shared.settings;
                    let local = local_pushback(result.as_ref().err().and_then(as_error));
                    let kind = match s.classifier.classify(result.as_ref()) {
                        Outcome::Failure(kind) if s.shared.retry_if.is_none_or(|f| f(&kind)) => kind,
                        // Rate limited here, not sent: retried after its wait.
                        _ if local.is_some() => FailureKind::Custom("rate limited"),
                        // A retry turned away by the stack's own protection
                        // (an open breaker): keep the last real failure.
                        _ => return Poll::Ready(result.map_err(|e| after_retry(e, this.last.take(), *this.retries))),
                    };
                    if *this.retries >= s.max_retries {
                        s.shared.exhausted.increment(1);
                        return Poll::Ready(result);
                    }
                    let pushback = match &result {
                        Ok(res) => s.requests.pushback(res),
                        Err(_) => local.map_or(Pushback::None, Pushback::After),
                    };
                    // Not replayable (a POST, a streaming body ...), or not
                    // safe to repeat after this failure: never retried.
                    let failure = match &result {
                        Ok(_) => AttemptFailure::new(kind, pushback),
                        Err(e) => match as_error(e) {
                            Some(e) => AttemptFailure::new(kind, pushback).with_error(e),
                            None => AttemptFailure::new(kind, pushback),
                        },
                    };
                    match this.copy.as_ref() {
                        Some(copy) if s.requests.may_retry(copy, &failure) => {}
                        Some(_) => {
                            tracing::debug!(
                                service = %s.shared.name,
                                failure = %kind,
                                "not retrying: the server may have processed the request"
                            );
                            return Poll::Ready(result);
                        }
                        None => return Poll::Ready(result),
                    }
                    let Some(service) = this.shared.service() else { return Poll::Ready(result) };
                    let delay = match pushback {
                        Pushback::Stop => return Poll::Ready(result),
                        // The server said when: never sooner, even past
                        // `max_delay`; longer than `max_pushback`: no retry.
                        Pushback::After(d) if d > s.shared.max_pushback => {
                            tracing::debug!(
                                service = %s.shared.name,
                                pushback_ms = d.as_millis() as u64,
                                "not retrying: the server asks for a longer wait than max_pushback"
                            );
                            return Poll::Ready(result);
                        }
                        Pushback::After(d) => d,
                        Pushback::None => s.shared.delay(*this.retries, *this.previous_delay),
                    };
                    // Never sleep past the deadline of an enclosing timeout:
                    // give up with this result instead.
                    if let Some(deadline) = Deadline::current() {
                        if crate::deadline::instant_after(Instant::now(), delay) >= deadline.instant() {
                            tracing::debug!(
                                service = %s.shared.name,
                                delay_ms = delay.as_millis() as u64,
                                pushback = matches!(pushback, Pushback::After(_)),
                                "not retrying: the next attempt would start after the deadline"
                            );
                            return Poll::Ready(result);
                        }
                    }
                    if let Some(budget) = &s.shared.budget {
                        match budget.withdraw() {
                            Some(token) => *this.token = Some(token),
                            None => {
                                s.shared.budget_exhausted.increment(1);
                                tracing::warn!(service = %s.shared.name, "retry budget exhausted; not retrying");
                                return Poll::Ready(result);
                            }
                        }
                    }
                    *this.retries += 1;
                    *this.previous_delay = delay;
                    s.shared.retries.increment(1);
                    tracing::debug!(
                        service = %s.shared.name,
                        retry = *this.retries,
                        delay_ms = delay.as_millis() as u64,
                        pushback = matches!(pushback, Pushback::After(_)),
                        "retrying failed call"
                    );
                    // The failed response (and its connection) is released
                    // here, before the wait; an error is kept.
                    *this.last = Some(Box::new(match result {
                        Ok(_) => LastFailure::Response(kind),
                        Err(e) => LastFailure::Error(kind, e),
                    }));
                    let retry = Pending { sleep: tokio::time::sleep(delay), slept: delay.is_zero(), service };
                    this.state.set(State::Retrying { retry: Box::pin(retry) });
                }
                StateProj::Retrying { retry } => {
                    let retry = retry.as_mut().project();
                    if !*retry.slept {
                        ready!(retry.sleep.poll(cx));
                        *retry.slept = true;
                    }
                    if let Err(e) = ready!(retry.service.poll_ready(cx)) {
                        return Poll::Ready(Err(after_retry(e, this.last.take(), *this.retries)));
                    }
                    let req = this.copy.take().expect("a retry holds its request until it is sent");
                    let s = &this.shared.settings;
                    // Keep a copy only if another retry may follow this one.
                    if *this.retries < s.max_retries {
                        *this.copy = s.requests.clone_request(&req);
                    }
                    if let Some(token) = this.token.take() {
                        token.spend();
                    }
                    s.shared.attempts.increment(1);
                    let fut = retry.service.call(req);
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}
