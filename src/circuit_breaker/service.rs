//! The service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::state::Shared;
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
    shared: Arc<Shared>,
    // Shared by the clones and the response futures: a future holds a
    // pointer, not the classifier (an HTTP one is 256 bytes).
    classifier: Arc<C>,
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker { inner: self.inner.clone(), shared: self.shared.clone(), classifier: self.classifier.clone() }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        CircuitBreaker { inner, shared, classifier: Arc::new(classifier) }
    }

    /// A handle on this breaker's state.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle { shared: self.shared.clone() }
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
    type Future = ResponseFuture<S::Future, Arc<C>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let inner = &mut self.inner;
        ResponseFuture::admit(&self.shared, || inner.call(req), self.classifier.clone())
    }
}
