//! The chaos service.

use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{Outcome, Plan, Shared};
use crate::error::BoxError;

/// Service made by [`ChaosLayer`](super::ChaosLayer).
///
/// On `call` it decides the request's faults; without any it calls the
/// inner service at once (its future is the inner one's). A delayed request
/// takes the inner service, ready, into its future and calls it when the
/// delay is over (the service is `Clone` for that, as with tower's
/// `Buffer`-less middleware that call later); an aborted or black-holed one
/// never reaches it.
#[derive(Debug, Clone)]
pub struct Chaos<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Chaos<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Chaos { inner, shared }
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

impl<S, B, ResB> Service<Request<B>> for Chaos<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.shared.plan(&req) {
            Plan { delay: None, outcome: Outcome::Forward } => ResponseFuture::forward(self.inner.call(req)),
            Plan { delay: None, outcome } => ResponseFuture::now(outcome),
            Plan { delay: Some(delay), outcome: Outcome::Forward } => {
                // The ready service goes with the request; a clone stays.
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                ResponseFuture::delayed(delay, Some((ready, req)), Outcome::Forward)
            }
            Plan { delay: Some(delay), outcome } => ResponseFuture::delayed(delay, None, outcome),
        }
    }
}
