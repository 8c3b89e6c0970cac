//! The server-side service.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use super::validate::Check;

/// Service made by [`JwtPropagationLayer`](super::JwtPropagationLayer).
///
/// `poll_ready` is the inner service's. On `call` it checks the request's
/// bearer token — synchronously when its key is known, which is every request
/// but those naming a `kid` the JWKS cache does not have yet — and either
/// calls the inner service with the claims in the request's extensions and
/// the token current, or answers the request itself. Only a request that has
/// to wait for the JWKS is called later, on a clone of the inner service
/// (the one made ready is kept for it), hence `S: Clone`.
pub struct JwtPropagation<S, C> {
    inner: S,
    shared: Arc<Shared>,
    _claims: PhantomData<fn() -> C>,
}

impl<S: Clone, C> Clone for JwtPropagation<S, C> {
    fn clone(&self) -> Self {
        JwtPropagation { inner: self.inner.clone(), shared: self.shared.clone(), _claims: PhantomData }
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for JwtPropagation<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPropagation").field("inner", &self.inner).field("shared", &self.shared).finish()
    }
}

impl<S, C> JwtPropagation<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        JwtPropagation { inner, shared, _claims: PhantomData }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for JwtPropagation<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
    C: DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The handler (and whatever logs its request's headers) sees the
        // credential as sensitive: `Debug` of the headers hides it.
        if let http::header::Entry::Occupied(mut e) = req.headers_mut().entry(http::header::AUTHORIZATION) {
            e.iter_mut().for_each(|v| v.set_sensitive(true));
        }
        match self.shared.validator.check::<C>(req.headers(), false) {
            Check::Valid(claims, token) => {
                self.shared.accepted();
                req.extensions_mut().insert(claims);
                ResponseFuture::called(token, &mut self.inner, req)
            }
            Check::Invalid(e) => ResponseFuture::rejected(self.shared.reject(&req, e)),
            Check::Wait(wait) => {
                // Keep the service made ready for this request; the clone
                // takes its place for the next `poll_ready`.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(wait, req, inner, self.shared.clone())
            }
        }
    }
}
