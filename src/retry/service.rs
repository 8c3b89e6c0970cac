use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Settings;
use super::RetryRequests;
use crate::classify::Classify;

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
pub struct Retry<S, C, P> {
    inner: S,
    shared: Arc<RetryShared<S, C, P>>,
}

/// What the calls of one [`Retry`] (and its clones) share: the settings and
/// the service retries are sent through clones of.
pub(crate) struct RetryShared<S, C, P> {
    pub(crate) settings: Settings<C, P>,
    /// A clone of the service, taken at the first call. Locked only to clone
    /// it when a retry is due (never across an `.await`).
    template: OnceLock<Mutex<S>>,
}

impl<S: Clone, C, P> RetryShared<S, C, P> {
    /// A clone of the wrapped service, to send a retry through (`None` before
    /// the first call, which cannot have failed yet).
    pub(crate) fn service(&self) -> Option<S> {
        Some(self.template.get()?.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    fn clone(&self) -> Self {
        Retry { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn new(inner: S, settings: Settings<C, P>) -> Self {
        Retry { inner, shared: Arc::new(RetryShared { settings, template: OnceLock::new() }) }
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
            .field("name", &self.shared.settings.shared.name)
            .field("max_retries", &self.shared.settings.max_retries)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
    S::Error: 'static,
    C: Classify<S::Response, S::Error> + Clone,
    P: RetryRequests<Req, S::Response> + Clone,
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
        let settings = &self.shared.settings;
        if let Some(budget) = &settings.shared.budget {
            budget.deposit();
        }
        settings.shared.attempts.increment(1);
        let copy = if settings.max_retries > 0 { settings.requests.clone_request(&req) } else { None };
        if self.shared.template.get().is_none() {
            // The first call: keep a clone for the retries of every call.
            let _ = self.shared.template.set(Mutex::new(self.inner.clone()));
        }
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, copy, self.shared.clone())
    }
}
