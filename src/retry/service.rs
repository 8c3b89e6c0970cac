use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Settings;
use super::RetryRequests;
use crate::classify::Classify;

/// Retries failed calls to `S`; made by [`RetryLayer`](super::RetryLayer).
///
/// `S` must be `Clone`: every call keeps a clone to send its retries through,
/// after waiting for it to be ready, as tower's `Retry` does. Errors of `S` are
/// returned unchanged.
pub struct Retry<S, C, P> {
    inner: S,
    settings: Arc<Settings<C, P>>,
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    fn clone(&self) -> Self {
        Retry { inner: self.inner.clone(), settings: self.settings.clone() }
    }
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn new(inner: S, settings: Arc<Settings<C, P>>) -> Self {
        Retry { inner, settings }
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
            .field("name", &self.settings.shared.name)
            .field("max_retries", &self.settings.max_retries)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
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
        let shared = &self.settings.shared;
        if let Some(budget) = &shared.budget {
            budget.deposit();
        }
        shared.attempts.increment(1);
        let copy = if self.settings.max_retries > 0 { self.settings.requests.clone_request(&req) } else { None };
        // Call the instance that was polled ready; keep a fresh clone in `self`.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let fut = ready.call(req);
        ResponseFuture::new(fut, ready, copy, self.settings.clone())
    }
}
