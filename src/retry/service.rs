use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{Common, Settings};
use super::template::ServiceTemplate;
use super::RetryRequests;
use crate::classify::Classify;
use crate::deadline::DeadlineCarrier;

/// Retries failed calls to `S`; made by [`RetryLayer`](super::RetryLayer).
///
/// `S` must be `Clone`. The first attempt goes through this service (the
/// instance `poll_ready` made ready). At the first call the service keeps a
/// clone of its inner service, shared with its own clones; a retry goes
/// through a fresh clone of that one, made when the retry is due and polled
/// ready first. So a call that is not retried clones nothing and its future
/// does not hold a service — unlike tower's `Retry`, which clones the service
/// for every call. Clones of hyper-util's `Client`, tonic's `Channel` and this
/// crate's layers share their state, so every clone is as good as another; a
/// change made through [`get_mut`](Retry::get_mut) after the first call does
/// not reach the retries. Errors of `S` are returned unchanged.
///
/// The deadline a retry must not start after is read from the request at
/// `call` ([`DeadlineCarrier`], where a timeout above put it, or the task's
/// [current](crate::deadline::Deadline::current) one), and given to each
/// retry again.
pub struct Retry<S, C, P> {
    inner: S,
    shared: Arc<RetryShared<S, C, P>>,
}

/// What the calls of one [`Retry`] (and its clones) share: the settings and
/// the service retries are sent through clones of.
pub(crate) struct RetryShared<S, C, P> {
    settings: Settings<C, P>,
    template: ServiceTemplate<S>,
}

impl<S, C, P> RetryShared<S, C, P> {
    /// Retries allowed after the first attempt.
    #[inline]
    pub(crate) fn max_retries(&self) -> u32 {
        self.settings.max_retries
    }

    /// Which results are failures.
    #[inline]
    pub(crate) fn classifier(&self) -> &C {
        &self.settings.classifier
    }

    /// How requests are copied, and what a response says about retrying.
    #[inline]
    pub(crate) fn requests(&self) -> &P {
        &self.settings.requests
    }

    /// Name, budget, backoff and metrics of the layer.
    #[inline]
    pub(crate) fn common(&self) -> &Common {
        &self.settings.common
    }
}

impl<S: Clone, C, P> RetryShared<S, C, P> {
    /// A clone of the wrapped service, to send a retry through (`None` before
    /// the first call, which cannot have failed yet).
    pub(crate) fn service(&self) -> Option<S> {
        self.template.get()
    }
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    fn clone(&self) -> Self {
        Retry { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn new(inner: S, settings: Settings<C, P>) -> Self {
        Retry { inner, shared: Arc::new(RetryShared { settings, template: ServiceTemplate::new() }) }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, C, P> fmt::Debug for Retry<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.shared.common().name)
            .field("max_retries", &self.shared.max_retries())
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
    S::Error: 'static,
    C: Classify<S::Response, S::Error> + Clone,
    P: RetryRequests<Req, S::Response> + Clone,
    Req: DeadlineCarrier,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        if let Some(budget) = &shared.common().budget {
            budget.deposit();
        }
        shared.common().attempts.increment(1);
        let copy = if shared.max_retries() > 0 { shared.requests().clone_request(&req) } else { None };
        // Needed only by a call that may be retried.
        let deadline = if copy.is_some() { crate::deadline::of(&req) } else { None };
        // The first call: keep a clone for the retries of every call.
        shared.template.keep(&self.inner);
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, copy, deadline, self.shared.clone())
    }
}
