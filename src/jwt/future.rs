//! Response future of the server-side service.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::jwks::KeyWait;
use super::layer::Shared;
use super::token::{BearerToken, TokenScope};
use super::validate::Check;

pin_project! {
    /// Response future of [`JwtPropagation`](super::JwtPropagation): the
    /// inner service's future polled with the token current, or the answer
    /// to a refused request.
    pub struct ResponseFuture<S, ReqB, C>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, C>
    where
        S: Service<Request<ReqB>>,
    {
        Called { #[pin] fut: TokenScope<S::Future> },
        Rejected { response: Option<S::Response> },
        // Boxed: only a request naming a `kid` being fetched gets here.
        Waiting { waiting: Box<Waiting<S, ReqB, C>> },
    }
}

struct Waiting<S, ReqB, C> {
    wait: KeyWait,
    req: Option<Request<ReqB>>,
    inner: S,
    shared: Arc<Shared>,
    _claims: PhantomData<fn() -> C>,
}

impl<S, ReqB, C> ResponseFuture<S, ReqB, C>
where
    S: Service<Request<ReqB>>,
{
    #[inline]
    pub(crate) fn called(token: BearerToken, inner: &mut S, req: Request<ReqB>) -> Self {
        ResponseFuture { state: State::Called { fut: TokenScope::call(token, || inner.call(req)) } }
    }

    #[cold]
    pub(crate) fn rejected(response: S::Response) -> Self {
        ResponseFuture { state: State::Rejected { response: Some(response) } }
    }

    #[cold]
    pub(crate) fn waiting(wait: KeyWait, req: Request<ReqB>, inner: S, shared: Arc<Shared>) -> Self {
        let waiting = Box::new(Waiting { wait, req: Some(req), inner, shared, _claims: PhantomData });
        ResponseFuture { state: State::Waiting { waiting } }
    }
}

impl<S, ReqB, C> fmt::Debug for ResponseFuture<S, ReqB, C>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Waiting { .. } => "waiting for keys",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<S, ReqB, ResB, C> Future for ResponseFuture<S, ReqB, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
    C: DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Output = Result<Response<ResB>, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { fut } => return fut.poll(cx),
                StateProj::Rejected { response } => {
                    let res = response.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(res));
                }
                StateProj::Waiting { waiting } => {
                    ready!(waiting.wait.as_mut().poll(cx));
                    let mut req = waiting.req.take().expect("ResponseFuture polled after completion");
                    let shared = &waiting.shared;
                    match shared.validator.check::<C>(req.headers(), true) {
                        Check::Valid(claims, token) => {
                            shared.accepted();
                            req.extensions_mut().insert(claims);
                            let inner = &mut waiting.inner;
                            State::Called { fut: TokenScope::call(token, || inner.call(req)) }
                        }
                        Check::Invalid(e) => State::Rejected { response: Some(shared.reject(&req, e)) },
                        // `cached_only` never waits.
                        Check::Wait(_) => {
                            State::Rejected { response: Some(shared.reject(&req, super::error::JwtError::UnknownKey)) }
                        }
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
