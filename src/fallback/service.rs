//! The fallback service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use super::source::FallbackSource;
use super::{MarkFallback, Trigger};
use crate::classify::Classify;
use crate::error::BoxError;

/// Service made by [`FallbackLayer`](super::FallbackLayer).
///
/// `poll_ready` is the inner service's: an inner service that fails to
/// become ready fails the caller (put the fallback above a buffer or a
/// bulkhead that rejects in `call` to cover saturation).
#[derive(Debug, Clone)]
pub struct Fallback<S, Src, C> {
    inner: S,
    source: Src,
    classifier: C,
    trigger: Trigger,
    shared: Arc<Shared>,
}

impl<S, Src, C> Fallback<S, Src, C> {
    pub(crate) fn new(inner: S, source: Src, classifier: C, trigger: Trigger, shared: Arc<Shared>) -> Self {
        Fallback { inner, source, classifier, trigger, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, consuming the layer.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, Src, C> Service<Req> for Fallback<S, Src, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: MarkFallback,
    Src: FallbackSource<Req, S::Response>,
    C: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Src, C, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let kept = self.source.keep(&req);
        let future = self.inner.call(req);
        ResponseFuture::new(
            future,
            kept,
            self.source.clone(),
            self.classifier.clone(),
            self.trigger,
            self.shared.clone(),
        )
    }
}
