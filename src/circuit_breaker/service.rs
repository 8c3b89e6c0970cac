//! The service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::{BreakerRef, ResponseFuture, Stripes};
use super::CircuitBreakerHandle;
use crate::classify::{Classify, ResultClassifier};
use crate::BoxError;

/// A circuit breaker around `S` (see the [module docs](super)).
///
/// Clones share one breaker state. Rejections come from the response future
/// as a [`CircuitOpen`](super::CircuitOpen); `poll_ready` only reflects the
/// inner service's readiness.
#[derive(Debug)]
pub struct CircuitBreaker<S, C = ResultClassifier> {
    inner: S,
    // Shared by the clones; each response future holds a reference to its
    // thread's stripe (the state and the classifier behind one pointer).
    stripes: Arc<Stripes<C>>,
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker { inner: self.inner.clone(), stripes: self.stripes.clone() }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, stripes: Arc<Stripes<C>>) -> Self {
        CircuitBreaker { inner, stripes }
    }

    /// A handle on this breaker's state.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle { shared: self.stripes.shared().clone() }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, BreakerRef<C>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let inner = &mut self.inner;
        ResponseFuture::admit(self.stripes.get(), || inner.call(req))
    }
}
