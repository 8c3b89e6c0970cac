//! Response futures of the bulkhead services.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::error::BulkheadFull;
use super::shared::{InFlight, Shared, Waiting};
use crate::error::BoxError;

pin_project! {
    /// Response future of [`Bulkhead`](super::Bulkhead): the inner future and
    /// the permit it holds (released when it completes or is dropped), or a
    /// rejection.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<F> {
        Called {
            #[pin]
            inner: F,
            permit: Option<InFlight>,
        },
        Rejected {
            error: Option<BulkheadFull>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(inner: F, permit: InFlight) -> Self {
        ResponseFuture { state: State::Called { inner, permit: Some(permit) } }
    }

    pub(crate) fn rejected(error: BulkheadFull) -> Self {
        ResponseFuture { state: State::Rejected { error: Some(error) } }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Called { .. } => f.write_str("ResponseFuture::Called"),
            State::Rejected { error } => f.debug_tuple("ResponseFuture::Rejected").field(error).finish(),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Called { inner, permit } => {
                let out = ready!(inner.poll(cx));
                // Release the permit as soon as the call is complete, even if
                // the caller keeps the finished future around.
                *permit = None;
                Poll::Ready(out.map_err(Into::into))
            }
            Proj::Rejected { error } => {
                let e = error.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Err(e.into()))
            }
        }
    }
}

pin_project! {
    /// Response future of [`KeyedBulkhead`](super::KeyedBulkhead): like
    /// [`ResponseFuture`], with one more state for a call that waits for a
    /// permit of its partition before the inner service is called.
    pub struct KeyedResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: KeyedState<S, Req>,
    }
}

pin_project! {
    #[project = KeyedProj]
    enum KeyedState<S, Req>
    where
        S: Service<Req>,
    {
        // Waiting for a permit; holds the ready inner service and the request.
        Waiting {
            waiting: Waiting,
            service: Option<S>,
            request: Option<Req>,
            shared: std::sync::Arc<Shared>,
        },
        // Called or rejected.
        Done {
            #[pin]
            inner: ResponseFuture<S::Future>,
        },
    }
}

impl<S: Service<Req>, Req> KeyedResponseFuture<S, Req> {
    pub(crate) fn done(inner: ResponseFuture<S::Future>) -> Self {
        KeyedResponseFuture { state: KeyedState::Done { inner } }
    }

    pub(crate) fn waiting(waiting: Waiting, service: S, request: Req, shared: std::sync::Arc<Shared>) -> Self {
        KeyedResponseFuture {
            state: KeyedState::Waiting { waiting, service: Some(service), request: Some(request), shared },
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for KeyedResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            KeyedState::Waiting { waiting, .. } => {
                f.debug_tuple("KeyedResponseFuture::Waiting").field(waiting).finish()
            }
            KeyedState::Done { inner } => f.debug_tuple("KeyedResponseFuture::Done").field(inner).finish(),
        }
    }
}

impl<S, Req, T> Future for KeyedResponseFuture<S, Req>
where
    S: Service<Req, Response = T>,
    S::Error: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                KeyedProj::Done { inner } => return inner.poll(cx),
                KeyedProj::Waiting { waiting, service, request, shared } => {
                    let permit = ready!(waiting.acquire.as_mut().poll(cx));
                    let waited = shared.waited(waiting.started);
                    match permit {
                        Some(permit) => {
                            let mut svc = service.take().expect("KeyedResponseFuture polled after completion");
                            let req = request.take().expect("KeyedResponseFuture polled after completion");
                            ResponseFuture::called(svc.call(req), shared.in_flight(permit))
                        }
                        None => ResponseFuture::rejected(shared.reject(waited)),
                    }
                }
            };
            state.set(KeyedState::Done { inner: next });
        }
    }
}
