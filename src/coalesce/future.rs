//! The coalescing layer's response future.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::TryFuture;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower_service::Service;

use super::flight::{Flights, Guard, Role, Slot};
use super::layer::Shared;
use super::Key;
use crate::error::BoxError;

/// The future of a caller that waits for another caller's call.
pub(crate) type Wait<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`Coalesce`](super::Coalesce): a call of its own
    /// (alone, or shared with the callers that come while it runs), or the
    /// wait for another caller's.
    pub struct ResponseFuture<F, K: Key, Res> {
        #[pin]
        kind: Kind<F, K, Res>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, K: Key, Res> {
        Alone { #[pin] call: F },
        Lead { #[pin] call: F, guard: Option<Guard<K, Res>> },
        // Boxed: only callers whose call is saved wait, and an `async` wait
        // (which may take the call over) is far simpler than a hand-made one.
        Follow { wait: Wait<Res> },
    }
}

impl<F, K: Hash + Eq, Res> ResponseFuture<F, K, Res> {
    pub(crate) fn alone(call: F) -> Self {
        ResponseFuture { kind: Kind::Alone { call } }
    }

    pub(crate) fn lead(call: F, guard: Guard<K, Res>) -> Self {
        ResponseFuture { kind: Kind::Lead { call, guard: Some(guard) } }
    }

    pub(crate) fn follow(wait: Wait<Res>) -> Self {
        ResponseFuture { kind: Kind::Follow { wait } }
    }
}

impl<F, K: Hash + Eq, Res> fmt::Debug for ResponseFuture<F, K, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Alone { .. } => "alone",
            Kind::Lead { .. } => "lead",
            Kind::Follow { .. } => "follow",
        };
        f.debug_tuple("ResponseFuture").field(&kind).finish()
    }
}

impl<F, K, Res> Future for ResponseFuture<F, K, Res>
where
    F: TryFuture<Ok = Res>,
    F::Error: Into<BoxError>,
    K: Hash + Eq,
    Res: Clone,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Alone { call } => call.try_poll(cx).map_err(Into::into),
            KindProj::Lead { call, guard } => {
                let result = ready!(call.try_poll(cx)).map_err(Into::into);
                Poll::Ready(guard.take().expect("ResponseFuture polled after completion").finish(result))
            }
            KindProj::Follow { wait } => wait.as_mut().poll(cx),
        }
    }
}

/// Waits for the answer of the flight `rx` watches; if the caller running
/// it goes away first, runs the call with this caller's own request (or
/// waits for the caller that does).
pub(crate) async fn follow<S, Req, K, Res>(
    mut rx: watch::Receiver<Slot<Res>>,
    service: S,
    request: Req,
    mut key: K,
    flights: Arc<Flights<K, Res>>,
    shared: Arc<Shared>,
) -> Result<Res, BoxError>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
    K: Key,
    Res: Clone,
{
    loop {
        loop {
            match &*rx.borrow_and_update() {
                Slot::Done(result) => return result.clone().map_err(|e| Box::new(e) as BoxError),
                Slot::Abandoned => break,
                Slot::Running => {}
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        match flights.join(key) {
            Role::Follow(next, handed_back) => (rx, key) = (next, handed_back),
            Role::Lead(guard) => {
                shared.took_over();
                let result = call(service, request).await;
                return guard.finish(result);
            }
            Role::Alone => return call(service, request).await,
        }
    }
}

async fn call<S: Service<Req>, Req>(mut service: S, request: Req) -> Result<S::Response, BoxError>
where
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(Into::into)?;
    service.call(request).await.map_err(Into::into)
}
