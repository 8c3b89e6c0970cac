//! The coalescing service.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::flight::{Flights, Role};
use super::future::{follow, ResponseFuture};
use super::layer::Shared;
use crate::error::BoxError;

/// Service made by [`CoalesceLayer`](super::CoalesceLayer).
///
/// On `call`, a request whose key has a call in flight waits for that
/// call's answer (keeping a clone of the service and its request, to run
/// the call itself if the caller running it goes away); otherwise it runs
/// its call, and the requests with the same key that come meanwhile share
/// it.
pub struct Coalesce<S, K, F, Res> {
    inner: S,
    key: F,
    flights: Arc<Flights<K, Res>>,
    shared: Arc<Shared>,
}

impl<S, K, F, Res> Coalesce<S, K, F, Res> {
    pub(crate) fn new(inner: S, key: F, flights: Arc<Flights<K, Res>>, shared: Arc<Shared>) -> Self {
        Coalesce { inner, key, flights, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, K, F: Clone, Res> Clone for Coalesce<S, K, F, Res> {
    fn clone(&self) -> Self {
        Coalesce {
            inner: self.inner.clone(),
            key: self.key.clone(),
            flights: self.flights.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, Res> fmt::Debug for Coalesce<S, K, F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce").field("inner", &self.inner).field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl<S, Req, K, F> Service<Req> for Coalesce<S, K, F, S::Response>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Clone + Send + Sync + 'static,
    Req: Send + 'static,
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return ResponseFuture::alone(self.inner.call(req));
        };
        match self.flights.join(key) {
            Role::Lead(guard) => {
                self.shared.led();
                ResponseFuture::lead(self.inner.call(req), guard)
            }
            Role::Follow(rx, key) => {
                self.shared.followed();
                let (service, flights, shared) = (self.inner.clone(), self.flights.clone(), self.shared.clone());
                ResponseFuture::follow(Box::pin(follow(rx, service, req, key, flights, shared)))
            }
            Role::Alone => {
                self.shared.alone();
                ResponseFuture::alone(self.inner.call(req))
            }
        }
    }
}
