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
use crate::deadline::{Deadline, DeadlineCarrier};

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
        call: Call<S, Req, C, P>,
    }
}

/// What a call keeps between its attempts.
struct Call<S: Service<Req>, Req, C, P> {
    // A copy of the request: the next retry's (`None`: not retryable, or no
    // retry left). During a backoff it is the request about to be sent.
    copy: Option<Req>,
    // The deadline the request carried (or the task had) at `call`: no retry
    // starts after it, and each retry carries it again.
    deadline: Option<Deadline>,
    // Once the call was retried. Boxed, like the backoff state: only a
    // retried call pays for it, and a call that is not retried initializes,
    // moves and drops a smaller future.
    retried: Option<Box<Retried<S::Error>>>,
    shared: Arc<RetryShared<S, C, P>>,
}

/// What a call keeps once it was retried.
struct Retried<E> {
    retries: u32,
    previous_delay: Duration,
    // How the last attempt failed: kept for the error of a retry the stack's
    // own protection rejects.
    last: Option<LastFailure<E>>,
    // The retry taken from the budget, given back if the call is dropped
    // during the backoff.
    token: Option<BudgetToken>,
}

impl<S: Service<Req>, Req, C, P> Call<S, Req, C, P> {
    /// Retries sent so far.
    fn retries(&self) -> u32 {
        self.retried.as_ref().map_or(0, |r| r.retries)
    }
}

/// What follows an attempt.
enum Next<S, T> {
    /// The call's result.
    Done(T),
    /// A retry, after its backoff.
    Retry(Pending<S>),
}

impl<S: Service<Req>, Req, C, P> ResponseFuture<S, Req, C, P> {
    #[inline]
    pub(crate) fn new(
        fut: S::Future,
        copy: Option<Req>,
        deadline: Option<Deadline>,
        shared: Arc<RetryShared<S, C, P>>,
    ) -> Self {
        let call = Call { copy, deadline, retried: None, shared };
        ResponseFuture { state: State::Calling { fut }, call }
    }
}

impl<S: Service<Req>, Req, C, P> fmt::Debug for ResponseFuture<S, Req, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retries", &self.call.retries())
            .field("retryable", &self.call.copy.is_some())
            .field("deadline", &self.call.deadline)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req> + Clone,
    S::Error: 'static,
    C: Classify<S::Response, S::Error>,
    P: RetryRequests<Req, S::Response>,
    Req: DeadlineCarrier,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx));
                    match this.call.after_attempt(result) {
                        Next::Done(result) => return Poll::Ready(result),
                        Next::Retry(retry) => this.state.set(State::Retrying { retry: Box::pin(retry) }),
                    }
                }
                StateProj::Retrying { retry } => {
                    let retry = retry.as_mut().project();
                    if !*retry.slept {
                        ready!(retry.sleep.poll(cx));
                        *retry.slept = true;
                    }
                    if let Err(e) = ready!(retry.service.poll_ready(cx)) {
                        return Poll::Ready(Err(this.call.after_retry(e)));
                    }
                    let fut = this.call.resend(retry.service);
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}

impl<S, Req, C, P> Call<S, Req, C, P>
where
    S: Service<Req> + Clone,
    S::Error: 'static,
    C: Classify<S::Response, S::Error>,
    P: RetryRequests<Req, S::Response>,
    Req: DeadlineCarrier,
{
    /// An attempt ended with `result`: the call's result, or a retry.
    #[inline]
    fn after_attempt(&mut self, result: Result<S::Response, S::Error>) -> Next<S, Result<S::Response, S::Error>> {
        let shared = &*self.shared;
        // A wait asked by a rate limiter of this process (only an error can be one).
        let local = match &result {
            Ok(_) => None,
            Err(e) => local_pushback(as_error(e)),
        };
        let kind = match shared.classifier().classify(result.as_ref()) {
            Outcome::Failure(kind) if shared.common().retry_if.is_none_or(|f| f(&kind)) => kind,
            // Rate limited here, not sent: retried after its wait.
            _ if local.is_some() => FailureKind::Custom("rate limited"),
            // A retry turned away by the stack's own protection (an open
            // breaker): keep the last real failure.
            _ => return Next::Done(result.map_err(|e| self.after_retry(e))),
        };
        self.after_failure(kind, local, result)
    }

    /// An attempt failed as `kind`: a retry, or the call's result. Out of
    /// line (`cold`): most calls never get here, and their path stays short.
    #[cold]
    fn after_failure(
        &mut self,
        kind: FailureKind,
        local: Option<Duration>,
        result: Result<S::Response, S::Error>,
    ) -> Next<S, Result<S::Response, S::Error>> {
        let shared = &*self.shared;
        let common = shared.common();
        let retries = self.retries();
        if retries >= shared.max_retries() {
            common.exhausted.increment(1);
            return Next::Done(result);
        }
        let pushback = match &result {
            Ok(res) => shared.requests().pushback(res),
            Err(_) => local.map_or(Pushback::None, Pushback::After),
        };
        if !self.may_repeat(kind, pushback, &result) {
            return Next::Done(result);
        }
        let Some(service) = shared.service() else { return Next::Done(result) };
        let Some(delay) = self.delay(pushback) else { return Next::Done(result) };
        let Some(token) = self.take_from_budget() else { return Next::Done(result) };
        common.retries.increment(1);
        tracing::debug!(
            service = %common.name,
            retry = retries + 1,
            delay_ms = delay.as_millis() as u64,
            pushback = matches!(pushback, Pushback::After(_)),
            "retrying failed call"
        );
        // The failed response (and its connection) is released here, before
        // the wait; an error is kept.
        let last = Some(match result {
            Ok(_) => LastFailure::Response(kind),
            Err(e) => LastFailure::Error(kind, e),
        });
        let retried = Retried { retries: retries + 1, previous_delay: delay, last, token };
        match &mut self.retried {
            Some(r) => **r = retried,
            None => self.retried = Some(Box::new(retried)),
        }
        Next::Retry(Pending { sleep: tokio::time::sleep(delay), slept: delay.is_zero(), service })
    }

    /// `err`, the result of a retry, as the call's error: a rejection by
    /// the stack's own protection carries the last real failure.
    fn after_retry(&mut self, err: S::Error) -> S::Error {
        match self.retried.as_mut() {
            Some(r) => after_retry(err, r.last.take(), r.retries),
            None => err,
        }
    }

    /// Whether the request may be sent again after this failure: it was
    /// copied (not a POST, a streaming body ...), and the request policy
    /// deems it safe to repeat.
    fn may_repeat(&self, kind: FailureKind, pushback: Pushback, result: &Result<S::Response, S::Error>) -> bool {
        let Some(copy) = self.copy.as_ref() else { return false };
        let failure = AttemptFailure::new(kind, pushback);
        let failure = match result.as_ref().err().and_then(as_error) {
            Some(e) => failure.with_error(e),
            None => failure,
        };
        if self.shared.requests().may_retry(copy, &failure) {
            return true;
        }
        tracing::debug!(
            service = %self.shared.common().name,
            failure = %kind,
            "not retrying: the server may have processed the request"
        );
        false
    }

    /// The wait before the retry: the server's pushback or the backoff.
    /// `None`: no retry (the server said not to, asked for longer than
    /// `max_pushback`, or the retry would start after the deadline).
    fn delay(&self, pushback: Pushback) -> Option<Duration> {
        let common = self.shared.common();
        let delay = match pushback {
            Pushback::Stop => return None,
            // The server said when: never sooner, even past `max_delay`;
            // longer than `max_pushback`: no retry.
            Pushback::After(d) if d > common.max_pushback => {
                tracing::debug!(
                    service = %common.name,
                    pushback_ms = d.as_millis() as u64,
                    "not retrying: the server asks for a longer wait than max_pushback"
                );
                return None;
            }
            Pushback::After(d) => d,
            Pushback::None => {
                let (retries, previous) =
                    self.retried.as_ref().map_or((0, Duration::ZERO), |r| (r.retries, r.previous_delay));
                common.delay(retries, previous)
            }
        };
        // Never sleep past the deadline: give up with this result instead.
        if let Some(deadline) = self.deadline {
            if crate::deadline::instant_after(Instant::now(), delay) >= deadline.instant() {
                tracing::debug!(
                    service = %common.name,
                    delay_ms = delay.as_millis() as u64,
                    pushback = matches!(pushback, Pushback::After(_)),
                    "not retrying: the next attempt would start after the deadline"
                );
                return None;
            }
        }
        Some(delay)
    }

    /// Take the retry from the budget, if the layer has one: `None` when it
    /// is spent, `Some(None)` without a budget.
    fn take_from_budget(&self) -> Option<Option<BudgetToken>> {
        let common = self.shared.common();
        let Some(budget) = &common.budget else { return Some(None) };
        match budget.withdraw() {
            Some(token) => Some(Some(token)),
            None => {
                common.budget_exhausted.increment(1);
                tracing::warn!(service = %common.name, "retry budget exhausted; not retrying");
                None
            }
        }
    }

    /// Send the retry through `service` (ready), keeping a copy if another
    /// may follow.
    fn resend(&mut self, service: &mut S) -> S::Future {
        let mut req = self.copy.take().expect("a retry holds its request until it is sent");
        let shared = &*self.shared;
        if self.retries() < shared.max_retries() {
            self.copy = shared.requests().clone_request(&req);
        }
        // After the copy: a request policy leaves a deadline out of its
        // copies when it is all their extensions hold (see `HttpRequests`).
        if let Some(deadline) = self.deadline {
            req.set_deadline(deadline);
        }
        if let Some(token) = self.retried.as_mut().and_then(|r| r.token.take()) {
            token.spend();
        }
        shared.common().attempts.increment(1);
        service.call(req)
    }
}
