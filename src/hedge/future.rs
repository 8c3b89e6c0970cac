use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::service::HedgeShared;
use crate::classify::Classify;
use crate::deadline::Deadline;
use crate::retry::{BudgetToken, RetryRequests};

/// The copies sent after the first, once one was due. Boxed in the response
/// future: only a hedged call pays for it.
struct Hedging<S, F> {
    /// A hedge waiting for its service to be ready, with the budget it took
    /// (given back if it is never sent).
    pending: Option<(S, Option<BudgetToken>)>,
    flights: Vec<Flight<F>>,
    sent: u32,
}

struct Flight<F> {
    fut: Pin<Box<F>>,
    start: Instant,
}

pin_project! {
    /// Response future of [`Hedge`](super::Hedge): the first request, the
    /// timer of the next hedge, and the hedges in flight. A call that is not
    /// hedged allocates nothing; when it completes, or when it is dropped,
    /// every copy still in flight is dropped at once (cancelled).
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        start: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
        // The next hedge's request (`None`: no hedge may be sent).
        copy: Option<Req>,
        delay: Duration,
        hedging: Option<Box<Hedging<S, S::Future>>>,
        // A failed answer, kept while other copies are in flight.
        failed: Option<Result<S::Response, S::Error>>,
        shared: Arc<HedgeShared<S, C, P>>,
    }
}

impl<S: Service<Req>, Req, C, P> ResponseFuture<S, Req, C, P> {
    #[inline]
    pub(crate) fn new(
        fut: S::Future,
        start: Option<Instant>,
        hedge: Option<(Req, Duration)>,
        shared: Arc<HedgeShared<S, C, P>>,
    ) -> Self {
        let (copy, delay) = match hedge {
            Some((copy, delay)) => (Some(copy), delay),
            None => (None, Duration::ZERO),
        };
        // The timer is armed at the first poll that finds no answer.
        ResponseFuture { primary: Some(fut), start, timer: None, copy, delay, hedging: None, failed: None, shared }
    }
}

impl<S: Service<Req>, Req, C, P> fmt::Debug for ResponseFuture<S, Req, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedges", &self.hedging.as_ref().map_or(0, |h| h.sent))
            .field("hedgeable", &self.copy.is_some())
            .finish_non_exhaustive()
    }
}

/// What became of an answer.
enum Judged<T> {
    Won(T),
    Failed(T),
}

impl<S, C, P> HedgeShared<S, C, P> {
    /// Whether `result` wins; records its latency when it does.
    fn judge<Res, E>(&self, result: Result<Res, E>, start: Option<Instant>) -> Judged<Result<Res, E>>
    where
        C: Classify<Res, E>,
    {
        let s = &self.settings;
        if s.classifier.classify(result.as_ref()).is_failure() {
            return Judged::Failed(result);
        }
        if let Some(start) = start {
            let now = Instant::now();
            if let Some(delay) = s.shared.delay.record(now.saturating_duration_since(start), now) {
                tracing::debug!(
                    service = %s.shared.name,
                    delay_us = delay.map(|d| d.as_micros() as u64),
                    "hedge delay changed (none: too few answers in the last window)"
                );
            }
        }
        Judged::Won(result)
    }

    /// The hedge timer fired: a hedge may be sent if the deadline leaves it
    /// time and the budget allows it.
    fn start_hedge(&self, delay: Duration) -> Option<(S, Option<BudgetToken>)>
    where
        S: Clone,
    {
        let s = &self.settings.shared;
        if Deadline::current().is_some_and(|d| d.remaining() < delay) {
            tracing::debug!(service = %s.name, "no hedge: it could not answer before the deadline");
            return None;
        }
        let token = match &s.budget {
            None => None,
            Some(budget) => match budget.withdraw() {
                Some(token) => Some(token),
                None => {
                    s.budget_exhausted.increment(1);
                    tracing::debug!(service = %s.name, "hedge budget exhausted; not hedging");
                    return None;
                }
            },
        };
        Some((self.service()?, token))
    }
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    P: RetryRequests<Req, S::Response>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            // The answers first: a call that answers at its first poll never
            // registers its hedge timer.
            if let Some(fut) = this.primary.as_mut().as_pin_mut() {
                if let Poll::Ready(result) = fut.poll(cx) {
                    this.primary.set(None);
                    match shared.judge(result, *this.start) {
                        Judged::Won(result) => {
                            // The losers are cancelled now, not when the
                            // caller drops this future.
                            *this.hedging = None;
                            this.timer.set(None);
                            return Poll::Ready(result);
                        }
                        Judged::Failed(result) => *this.failed = Some(result),
                    }
                }
            }
            if let Some(result) = poll_flights(shared, this.hedging, this.failed, this.start.is_some(), cx) {
                this.timer.set(None);
                return Poll::Ready(result);
            }
            let in_flight = this.primary.is_some() || this.hedging.as_ref().is_some_and(|h| !h.flights.is_empty());
            if !in_flight {
                // Every copy failed: the last failure is the answer.
                *this.hedging = None;
                let result = this.failed.take().expect("an answer when nothing is in flight");
                return Poll::Ready(result);
            }
            let due = this.copy.is_some() || this.hedging.as_ref().is_some_and(|h| h.pending.is_some());
            // A hedge just sent is polled at the next turn of the loop.
            if !due || !send_due_hedges(shared, this.timer.as_mut(), this.copy, this.hedging, *this.delay, cx) {
                return Poll::Pending;
            }
        }
    }
}

/// Poll the hedges in flight; the winner's answer, if one won (the others are
/// then dropped). Failed answers go to `failed`.
fn poll_flights<S, C, P, Req>(
    shared: &HedgeShared<S, C, P>,
    hedging: &mut Option<Box<Hedging<S, S::Future>>>,
    failed: &mut Option<Result<S::Response, S::Error>>,
    record: bool,
    cx: &mut Context<'_>,
) -> Option<Result<S::Response, S::Error>>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
{
    let h = hedging.as_deref_mut()?;
    let mut i = 0;
    while i < h.flights.len() {
        let flight = &mut h.flights[i];
        let Poll::Ready(result) = flight.fut.as_mut().poll(cx) else {
            i += 1;
            continue;
        };
        let start = record.then_some(flight.start);
        h.flights.swap_remove(i);
        match shared.judge(result, start) {
            Judged::Won(result) => {
                shared.settings.shared.won.increment(1);
                tracing::debug!(service = %shared.settings.shared.name, "a hedge answered first");
                *hedging = None;
                return Some(result);
            }
            Judged::Failed(result) => *failed = Some(result),
        }
    }
    None
}

/// Send the hedge that is due, if one is: wait out the timer, take the
/// budget, wait for the service to be ready, send; then arm the timer for the
/// next one. Returns whether a hedge was sent.
fn send_due_hedges<S, Req, C, P>(
    shared: &HedgeShared<S, C, P>,
    mut timer: Pin<&mut Option<Sleep>>,
    copy: &mut Option<Req>,
    hedging: &mut Option<Box<Hedging<S, S::Future>>>,
    delay: Duration,
    cx: &mut Context<'_>,
) -> bool
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    P: RetryRequests<Req, S::Response>,
{
    let s = &shared.settings;
    if hedging.as_ref().is_none_or(|h| h.pending.is_none()) {
        if timer.is_none() {
            if copy.is_none() {
                return false;
            }
            timer.set(Some(tokio::time::sleep(delay)));
        }
        let Some(sleep) = timer.as_mut().as_pin_mut() else { return false };
        if sleep.poll(cx).is_pending() {
            return false;
        }
        timer.set(None);
        let Some(pending) = shared.start_hedge(delay) else {
            *copy = None;
            return false;
        };
        // The first allocation of a call: a hedge is due.
        hedging.get_or_insert_with(|| Box::new(Hedging { pending: None, flights: Vec::new(), sent: 0 })).pending =
            Some(pending);
    }
    let h = hedging.as_deref_mut().expect("hedging started");
    let (service, _) = h.pending.as_mut().expect("a pending hedge");
    match service.poll_ready(cx) {
        Poll::Pending => return false,
        Poll::Ready(Err(_)) => {
            tracing::debug!(service = %s.shared.name, "no hedge: the service failed to become ready");
            h.pending = None;
            *copy = None;
            return false;
        }
        Poll::Ready(Ok(())) => {}
    }
    let (mut service, token) = h.pending.take().expect("a pending hedge");
    let Some(req) = copy.take() else { return false };
    h.sent += 1;
    if h.sent < s.shared.max_hedges {
        *copy = s.requests.clone_request(&req);
    }
    if let Some(token) = token {
        token.spend();
    }
    s.shared.sent.increment(1);
    tracing::debug!(service = %s.shared.name, hedge = h.sent, delay_us = delay.as_micros() as u64, "sending a hedge");
    h.flights.push(Flight { fut: Box::pin(service.call(req)), start: Instant::now() });
    if copy.is_some() {
        timer.set(Some(tokio::time::sleep(delay)));
    }
    true
}
