//! The chaos layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::error::InjectedFault;
use super::fault::Abort;
use super::layer::Outcome;
use crate::error::BoxError;

/// Response extension of an answer the chaos layer made up (an injected
/// HTTP status or gRPC code): the service was never called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInjected;

pin_project! {
    /// Response future of [`Chaos`](super::Chaos): the inner future, an
    /// injected failure, a delay before either, or a request never answered.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        state: State<F, S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        // A delay, then the call (when `call` is some) or the outcome.
        Waiting { #[pin] sleep: Sleep, call: Option<(S, R)>, outcome: Outcome },
        Calling { #[pin] future: F },
        Failing { abort: Option<Abort> },
        BlackHole,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    pub(crate) fn forward(future: F) -> Self {
        ResponseFuture { state: State::Calling { future } }
    }

    pub(crate) fn now(outcome: Outcome) -> Self {
        ResponseFuture { state: State::after(outcome) }
    }

    pub(crate) fn delayed(delay: Duration, call: Option<(S, R)>, outcome: Outcome) -> Self {
        ResponseFuture { state: State::Waiting { sleep: tokio::time::sleep(delay), call, outcome } }
    }
}

impl<F, S, R> State<F, S, R> {
    fn after(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Abort(abort) => State::Failing { abort: Some(abort) },
            Outcome::BlackHole => State::BlackHole,
            // `Forward` without a service to call: not planned by `Chaos`.
            Outcome::Forward => State::BlackHole,
        }
    }
}

impl<F, S, R, ResB, E> Future for ResponseFuture<F, S, R>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    S: Service<R, Future = F, Response = Response<ResB>, Error = E>,
    E: Into<BoxError>,
    ResB: Default,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Waiting { sleep, call, outcome } => {
                    ready!(sleep.poll(cx));
                    let next = match call.take() {
                        Some((mut service, request)) => State::Calling { future: service.call(request) },
                        None => State::after(*outcome),
                    };
                    state.set(next);
                }
                StateProj::Calling { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Failing { abort } => {
                    let abort = abort.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(injected(abort));
                }
                StateProj::BlackHole => return Poll::Pending,
            }
        }
    }
}

/// The made-up answer of an abort.
fn injected<B: Default>(abort: Abort) -> Result<Response<B>, BoxError> {
    let mut response = Response::new(B::default());
    match abort {
        Abort::Status(status) => *response.status_mut() = status,
        Abort::Grpc(code) => {
            *response.status_mut() = StatusCode::OK;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert("grpc-message", HeaderValue::from_static("fault%20injected"));
        }
        Abort::Io(kind) => return Err(Box::new(InjectedFault::new(kind))),
    }
    response.extensions_mut().insert(FaultInjected);
    Ok(response)
}
