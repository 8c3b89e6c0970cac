use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Settings;
use crate::classify::Classify;
use crate::retry::template::ServiceTemplate;
use crate::retry::RetryRequests;

/// Hedges slow calls to `S`; made by [`HedgeLayer`](super::HedgeLayer).
///
/// `S` must be `Clone`: a hedge goes through a clone of the service (taken
/// at the first call and shared by every clone of this one), polled ready
/// first, so it passes the bulkhead and breaker below like any call. A call
/// that is not hedged clones neither the service nor anything else.
pub struct Hedge<S, C, P> {
    inner: S,
    shared: Arc<HedgeShared<S, C, P>>,
}

/// What the calls of one [`Hedge`] (and its clones) share.
pub(crate) struct HedgeShared<S, C, P> {
    pub(crate) settings: Settings<C, P>,
    template: ServiceTemplate<S>,
}

impl<S: Clone, C, P> HedgeShared<S, C, P> {
    /// A clone of the wrapped service to send a hedge through.
    pub(crate) fn service(&self) -> Option<S> {
        self.template.get()
    }
}

impl<S: Clone, C, P> Clone for Hedge<S, C, P> {
    fn clone(&self) -> Self {
        Hedge { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S, C, P> Hedge<S, C, P> {
    pub(crate) fn new(inner: S, settings: Settings<C, P>) -> Self {
        Hedge { inner, shared: Arc::new(HedgeShared { settings, template: ServiceTemplate::new() }) }
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

impl<S: fmt::Debug, C, P> fmt::Debug for Hedge<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("name", &self.shared.settings.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Service<Req> for Hedge<S, C, P>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    P: RetryRequests<Req, S::Response>,
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
        let s = &self.shared.settings;
        // One clock read for the budget and the latency, when either wants it.
        let records = s.shared.delay.records();
        let now = (records || s.shared.budget.is_some()).then(Instant::now);
        if let (Some(budget), Some(now)) = (&s.shared.budget, now) {
            budget.deposit_at(now);
        }
        // A copy only when a hedge may be sent: the delay is known and the
        // request is safe to have in flight twice.
        let delay = if s.shared.max_hedges > 0 { s.shared.delay.current() } else { None };
        let copy = match delay {
            Some(_) if s.requests.may_hedge(&req) => s.requests.clone_request(&req),
            _ => None,
        };
        if copy.is_some() {
            self.shared.template.keep(&self.inner);
        }
        let start = now.filter(|_| records);
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, start, copy.zip(delay), self.shared.clone())
    }
}
